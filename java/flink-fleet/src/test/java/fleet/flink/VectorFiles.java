package fleet.flink;

import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.function.ThrowingConsumer;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The vector sets under tests/vectors, which the Python tests replay too, as one JUnit test per
 * file: the same listing for every Java vectors test.
 */
public final class VectorFiles {
    // fleet.vectors.dir names the telemetry vectors (the POM sets it); the other sets are its siblings.
    private static final Path TELEMETRY = Path.of(System.getProperty("fleet.vectors.dir", "../../tests/vectors/telemetry"));

    private VectorFiles() {
    }

    /** tests/vectors/{@code name}. */
    public static Path dir(String name) {
        return TELEMETRY.resolveSibling(name);
    }

    /**
     * A test named after each *.json file in {@code dir} (sorted) that replays it; fails unless
     * there are at least {@code atLeast}, so a wrong path cannot pass with no tests.
     */
    public static Stream<DynamicTest> tests(Path dir, int atLeast, ThrowingConsumer<Path> replay) throws IOException {
        List<Path> files;
        try (Stream<Path> listing = Files.list(dir)) {
            files = listing.filter(p -> p.toString().endsWith(".json")).sorted().toList();
        }
        assertTrue(files.size() >= atLeast, "vectors in " + dir.toAbsolutePath() + ": " + files);
        return files.stream().map(f -> DynamicTest.dynamicTest(f.getFileName().toString(), () -> replay.accept(f)));
    }
}
