package fleet.flink.shadow;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonProcessingException;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.StreamReadConstraints;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.json.JsonReadFeature;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.DeserializationFeature;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.json.JsonMapper;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.JsonNodeFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;

import java.math.BigDecimal;
import java.math.MathContext;
import java.util.Iterator;
import java.util.Map;
import java.util.function.BiConsumer;

/**
 * JSON as Python's {@code json} module reads and writes it, for the shadow core: parsing like
 * {@code json.loads} (NaN/Infinity accepted, trailing data rejected), writing like
 * fleet.shadow.domain.dumps ({@code json.dumps(separators=(",", ":"), ensure_ascii=False)}, floats
 * as Python's repr), and {@code repr} of values for the messages that quote them. Both cores must
 * produce the same bytes, so nothing here goes through Jackson's own writer.
 */
final class Json {
    static final JsonNodeFactory NODES = JsonNodeFactory.instance;

    private static final JsonMapper MAPPER = JsonMapper.builder()
            .enable(JsonReadFeature.ALLOW_NON_NUMERIC_NUMBERS)
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
            .build();

    static {
        // Python's json has no nesting or length limits of its own beyond recursion (~1000 levels).
        MAPPER.getFactory().setStreamReadConstraints(StreamReadConstraints.builder()
                .maxNestingDepth(990).maxNumberLength(4300).maxStringLength(Integer.MAX_VALUE).build());
    }

    private Json() {
    }

    /** json.loads; throws on anything Python would reject. */
    static JsonNode parse(String text) throws JsonProcessingException {
        JsonNode node = MAPPER.readTree(text);
        if (node == null || node.isMissingNode()) {
            throw new IllegalArgumentException("Expecting value: line 1 column 1 (char 0)");
        }
        return node;
    }

    static ObjectNode object() {
        return NODES.objectNode();
    }

    /** A field of an object, null when absent or JSON null (Python's dict.get). */
    static JsonNode get(JsonNode obj, String key) {
        JsonNode v = obj.get(key);
        return v == null || v.isNull() ? null : v;
    }

    static boolean isInt(JsonNode v) {
        return v != null && v.isIntegralNumber();
    }

    // --- writing ---------------------------------------------------------------------------

    static String dumps(JsonNode node) {
        StringBuilder out = new StringBuilder(128);
        write(out, node);
        return out.toString();
    }

    static void write(StringBuilder out, JsonNode node) {
        if (node == null || node.isNull()) {
            out.append("null");
        } else if (node.isContainerNode()) {
            container(out, node, ",", ":", Json::string, Json::write);
        } else if (node.isTextual()) {
            string(out, node.textValue());
        } else if (node.isBoolean()) {
            out.append(node.booleanValue() ? "true" : "false");
        } else if (node.isIntegralNumber()) {
            out.append(node.bigIntegerValue().toString());
        } else if (node.isNumber()) {
            out.append(floatRepr(node.doubleValue()));
        } else {
            throw new IllegalArgumentException("not a JSON value: " + node.getNodeType());
        }
    }

    /**
     * An object or an array, walked the same way by dumps and repr: only the separators and how
     * keys and values are written differ between them.
     */
    private static void container(StringBuilder out, JsonNode node, String comma, String colon,
                                  BiConsumer<StringBuilder, String> key, BiConsumer<StringBuilder, JsonNode> value) {
        if (node.isObject()) {
            out.append('{');
            boolean first = true;
            for (Iterator<Map.Entry<String, JsonNode>> it = node.fields(); it.hasNext(); ) {
                Map.Entry<String, JsonNode> e = it.next();
                if (!first) {
                    out.append(comma);
                }
                first = false;
                key.accept(out, e.getKey());
                out.append(colon);
                value.accept(out, e.getValue());
            }
            out.append('}');
        } else {
            out.append('[');
            for (int i = 0; i < node.size(); i++) {
                if (i > 0) {
                    out.append(comma);
                }
                value.accept(out, node.get(i));
            }
            out.append(']');
        }
    }

    private static final char[] HEX = "0123456789abcdef".toCharArray();

    /** A JSON string as json.dumps(ensure_ascii=False) writes it. */
    static void string(StringBuilder out, String s) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                case '\b' -> out.append("\\b");
                case '\f' -> out.append("\\f");
                default -> {
                    if (c < 0x20) {
                        out.append("\\u00").append(HEX[c >> 4]).append(HEX[c & 0xf]);
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        out.append('"');
    }

    /** Python's repr of a finite float: the shortest digits that round-trip, exponent outside [1e-4, 1e16). */
    static String floatRepr(double d) {
        if (Double.isNaN(d)) {
            return "NaN";
        }
        if (Double.isInfinite(d)) {
            return d > 0 ? "Infinity" : "-Infinity";
        }
        if (d == 0) {
            return (1 / d < 0) ? "-0.0" : "0.0";
        }
        // If the shortest round-tripping decimal has at most 15 digits, rounding the exact value
        // to 15 digits gives it (padded with zeros): a double's half-ulp is below half a unit of
        // the 15th digit (not so for subnormals: they search from 1). Otherwise 16 or 17 digits,
        // rounded to nearest as Python's repr picks.
        BigDecimal exact = new BigDecimal(d);
        BigDecimal shortest = exact;
        for (int p = Math.abs(d) < Double.MIN_NORMAL ? 1 : 15; p <= 17; p++) {
            BigDecimal r = exact.round(new MathContext(p));
            if (r.doubleValue() == d) {
                shortest = r;
                break;
            }
        }
        shortest = shortest.stripTrailingZeros();
        String digits = shortest.unscaledValue().abs().toString();
        int exp = digits.length() - 1 - shortest.scale();  // of the first digit
        StringBuilder out = new StringBuilder(24);
        if (d < 0) {
            out.append('-');
        }
        if (exp < -4 || exp >= 16) {
            out.append(digits.charAt(0));
            if (digits.length() > 1) {
                out.append('.').append(digits, 1, digits.length());
            }
            out.append('e').append(exp < 0 ? '-' : '+');
            int a = Math.abs(exp);
            if (a < 10) {
                out.append('0');
            }
            out.append(a);
        } else {
            String plain = shortest.abs().toPlainString();
            out.append(plain);
            if (plain.indexOf('.') < 0) {
                out.append(".0");
            }
        }
        return out.toString();
    }

    // --- Python's repr, for messages ---------------------------------------------------------

    /** repr() of the Python value json.loads makes of ``node`` (None for Java null). */
    static String repr(JsonNode node) {
        StringBuilder out = new StringBuilder();
        repr(out, node);
        return out.toString();
    }

    private static void repr(StringBuilder out, JsonNode node) {
        if (node == null || node.isNull()) {
            out.append("None");
        } else if (node.isContainerNode()) {
            container(out, node, ", ", ": ", (o, key) -> o.append(repr(key)), Json::repr);
        } else if (node.isTextual()) {
            out.append(repr(node.textValue()));
        } else if (node.isBoolean()) {
            out.append(node.booleanValue() ? "True" : "False");
        } else if (node.isIntegralNumber()) {
            out.append(node.bigIntegerValue().toString());
        } else {
            double d = node.doubleValue();
            out.append(Double.isNaN(d) ? "nan" : Double.isInfinite(d) ? (d > 0 ? "inf" : "-inf") : floatRepr(d));
        }
    }

    /** repr() of a Python str (None for null). */
    static String repr(String s) {
        if (s == null) {
            return "None";
        }
        char quote = s.indexOf('\'') >= 0 && s.indexOf('"') < 0 ? '"' : '\'';
        StringBuilder out = new StringBuilder(s.length() + 2).append(quote);
        for (int i = 0; i < s.length(); ) {
            int cp = s.codePointAt(i);
            i += Character.charCount(cp);
            if (cp == quote || cp == '\\') {
                out.append('\\').appendCodePoint(cp);
            } else if (cp == '\t') {
                out.append("\\t");
            } else if (cp == '\n') {
                out.append("\\n");
            } else if (cp == '\r') {
                out.append("\\r");
            } else if (cp < 0x20 || cp == 0x7f) {
                out.append("\\x").append(HEX[cp >> 4]).append(HEX[cp & 0xf]);
            } else if (cp < 0x7f || printable(cp)) {
                out.appendCodePoint(cp);
            } else if (cp <= 0xff) {
                out.append(String.format("\\x%02x", cp));
            } else if (cp <= 0xffff) {
                out.append(String.format("\\u%04x", cp));
            } else {
                out.append(String.format("\\U%08x", cp));
            }
        }
        return out.append(quote).toString();
    }

    /** str.isprintable for one non-ASCII code point: not a control, format, surrogate, private, unassigned or separator (bar space). */
    private static boolean printable(int cp) {
        switch (Character.getType(cp)) {
            case Character.CONTROL, Character.FORMAT, Character.SURROGATE, Character.PRIVATE_USE, Character.UNASSIGNED,
                 Character.LINE_SEPARATOR, Character.PARAGRAPH_SEPARATOR, Character.SPACE_SEPARATOR:
                return false;
            default:
                return true;
        }
    }
}
