"""Signed download URLs (fleet/ota/download_urls.py): the exact text signed, expiry, tampering, the shared key file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import stat
import threading
from urllib.parse import parse_qs, urlsplit

import pytest

from fleet.config import Settings
from fleet.ota import download_urls as urls
from fleet.ota.download_urls import DownloadUrlError, UrlKeyError

KEY = bytes(range(32))
NOW = 1_700_000_000


def test_the_signature_is_urlsafe_unpadded_hmac_sha256_of_the_four_lines():
    mac = hmac.new(KEY, b"dep1\nd1\nfw1\n1700003600", hashlib.sha256).digest()
    expected = base64.urlsafe_b64encode(mac).decode().rstrip("=")
    assert urls.sign(KEY, "dep1", "d1", "fw1", 1700003600) == expected
    assert "=" not in expected and len(expected) == 43


def test_download_path_is_relative_with_device_exp_and_sig_and_verifies():
    path = urls.download_path(KEY, "dep 1/x", "d1", "fw1", NOW + 0.7, 3600)
    parts = urlsplit(path)
    assert parts.path == "/v1/ota/download/dep%201%2Fx" and not parts.netloc
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert q["device"] == "d1" and q["exp"] == str(NOW + 3600)
    assert q["sig"] == urls.sign(KEY, "dep 1/x", "d1", "fw1", NOW + 3600)
    urls.verify(KEY, "dep 1/x", "d1", "fw1", int(q["exp"]), q["sig"], NOW + 3599)


@pytest.mark.parametrize("change", [
    {"deployment_id": "dep2"}, {"device_id": "d2"}, {"firmware_id": "fw2"}, {"exp": NOW + 7200},
    {"key": bytes(32)}, {"sig": "x"}, {"sig": ""}, {"sig": "é" * 43},
])
def test_anything_changed_is_a_bad_signature(change):
    args = {"key": KEY, "deployment_id": "dep1", "device_id": "d1", "firmware_id": "fw1", "exp": NOW + 60}
    sig = urls.sign(**args)
    with pytest.raises(DownloadUrlError, match="signature") as e:
        urls.verify(**{**args, "sig": sig, "now_s": NOW, **change})
    assert e.value.code == "bad_signature"


def test_expiry_is_told_only_to_a_genuine_url():
    sig = urls.sign(KEY, "dep1", "d1", "fw1", NOW)
    urls.verify(KEY, "dep1", "d1", "fw1", NOW, sig, NOW - 1)
    for now in (NOW, NOW + 1):
        with pytest.raises(DownloadUrlError, match="expired") as e:
            urls.verify(KEY, "dep1", "d1", "fw1", NOW, sig, now)
        assert e.value.code == "expired"
    with pytest.raises(DownloadUrlError) as e:
        urls.verify(KEY, "dep1", "d1", "fw1", NOW, sig[:-1] + ("A" if sig[-1] != "A" else "B"), NOW + 1)
    assert e.value.code == "bad_signature"


def test_a_newline_cannot_shift_text_between_ids():
    with pytest.raises(ValueError, match="newline"):
        urls.sign(KEY, "dep1\nd1", "fw1", "x", NOW)
    sig = urls.sign(KEY, "dep1", "d1", "fw1", NOW)  # the same signed text as ("dep1\nd1", "fw1") would be
    with pytest.raises(DownloadUrlError) as e:
        urls.verify(KEY, "dep1\nd1", "fw1", "fw1", NOW, sig, NOW - 1)
    assert e.value.code == "bad_signature"


def test_the_key_is_made_once_32_bytes_0600_and_read_back(tmp_path):
    path = tmp_path / "pki" / "ota-url.key"
    key = urls.load_or_create_key(path)
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert urls.load_or_create_key(path) == key  # another process: the same key
    assert not list(path.parent.glob("*.tmp"))


def test_racing_creators_agree_on_one_key(tmp_path):
    path = tmp_path / "ota-url.key"
    keys: list[bytes] = []
    start = threading.Barrier(8)

    def make():
        start.wait()
        keys.append(urls.load_or_create_key(path))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1 and path.read_bytes() == keys[0]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("content", [b"", b"short", bytes(33), b"a" * 64])
def test_a_key_file_of_the_wrong_size_is_refused_naming_it(tmp_path, content):
    path = tmp_path / "ota-url.key"
    path.write_bytes(content)
    with pytest.raises(UrlKeyError, match=rf"{path}: {len(content)} bytes, expected 32"):
        urls.load_or_create_key(path)
    assert path.read_bytes() == content  # never replaced behind the operator's back


def test_settings_key_path_and_ttl(tmp_path):
    s = Settings(var_dir=tmp_path)
    assert s.ota_url_key_path == tmp_path / "pki" / "ota-url.key" and s.ota_url_ttl_s == 3600
    given = Settings.from_env({"FLEET_OTA_URL_KEY_FILE": str(tmp_path / "k"), "FLEET_OTA_URL_TTL_S": "60"})
    assert given.ota_url_key_path == tmp_path / "k" and given.ota_url_ttl_s == 60
    cfg = tmp_path / "fleet.toml"
    cfg.write_text('[firmware]\nota_url_ttl_s = 120\nota_url_key_file = "/srv/k"\n')
    from_file = Settings.from_env({"FLEET_CONFIG_FILE": str(cfg)})
    assert from_file.ota_url_ttl_s == 120 and from_file.ota_url_key_path.as_posix() == "/srv/k"
    with pytest.raises(ValueError, match="ota_url_ttl_s"):
        Settings.from_env({"FLEET_OTA_URL_TTL_S": "0"})
