"""`virnucpro translate` end to end: byte-identical to the original, safe outputs, clean errors."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import pytest

from virnucpro.cli import main
from virnucpro.errors import OutputError
from virnucpro.files import AtomicWriter, atomic_write
from virnucpro.frames import FRAME_NAMES
from virnucpro.outputs import (
    SKIPPED_COLUMNS,
    check_writable,
    fasta_line,
    fasta_wrapped,
    translate_outputs,
    tsv_row,
)

SUFFIXES = ("_chunked500.fa", "_identified_nucleotide.fa", "_identified_protein.faa",
            "_skipped.tsv")
SMALL = b">a desc\nATGGCTAAAGGTGAACTGTTTTAA\n>b\nacgtNNNacgtaaa\n>empty\n\n>c\nCTAGTTAGTTAG\n"


def translate(*args: str) -> int:
    return main(["translate", *args])


def parse_fasta(text: str) -> list[tuple[str, str]]:
    records = []
    for block in text.split(">")[1:]:
        header, _, seq = block.partition("\n")
        records.append((header, seq.replace("\n", "")))
    return records


def outputs_of(out_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir())}


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# ------------------------------------------------------------------- the original's files
def vanilla_inputs(data: Path) -> list[Path]:
    names = sorted((data / "vanilla").glob("*.fa"))
    return [p for p in names if not any(s in p.name for s in ("_chunked", "_identified"))]


def test_vanilla_outputs_byte_identical(data_dir, tmp_path, capsys):
    inputs = vanilla_inputs(data_dir)
    assert inputs
    for path in inputs:
        out = tmp_path / path.stem
        assert translate(str(path), "-o", str(out)) == 0
        produced = outputs_of(out)
        assert sorted(produced) == sorted(path.stem + s for s in SUFFIXES)
        compared = 0
        for name, data in produced.items():
            original = path.parent / name
            if not original.exists():
                continue
            assert parse_fasta(data.decode()) == parse_fasta(original.read_text()), name
            assert data == original.read_bytes(), name
            compared += 1
        assert compared >= 1, path
    assert capsys.readouterr().out == ""


def test_vanilla_chunked_wrapping_detail(data_dir, tmp_path):
    # Biopython wraps at 60 and ends with a newline; the identified files are one line each.
    path = data_dir / "vanilla" / "test_with_orfs.fa"
    assert translate(str(path), "-o", str(tmp_path)) == 0
    chunked = (tmp_path / "test_with_orfs_chunked500.fa").read_text().splitlines()
    assert {len(line) for line in chunked if not line.startswith(">")} <= set(range(1, 61))
    protein = (tmp_path / "test_with_orfs_identified_protein.faa").read_text()
    assert protein.endswith("\n") and protein.count("\n") == 2 * protein.count(">")


# ------------------------------------------------------------------------- our files
def test_small_input_exact_files(tmp_path, capsys):
    path = write(tmp_path, "small.fa", SMALL)
    out = tmp_path / "out"
    assert translate(path, "-o", str(out), "--chunk-size", "12") == 0
    files = outputs_of(out)
    assert sorted(files) == ["small_chunked12.fa", "small_identified_nucleotide.fa",
                             "small_identified_protein.faa", "small_skipped.tsv"]
    assert files["small_chunked12.fa"].decode() == (
        ">a_chunk_1\nATGGCTAAAGGT\n>a_chunk_2\nGAACTGTTTTAA\n"
        ">b_chunk_1\nacgtNNNacgta\n>b_chunk_2\nNacgtaaa\n>c_chunk_1\nCTAGTTAGTTAG\n"
    )
    assert files["small_skipped.tsv"].decode() == (
        "id\tkind\treason\nempty\tsequence\tempty\nc_chunk_1\tchunk\tno_stop_free_frame\n"
    )
    protein = parse_fasta(files["small_identified_protein.faa"].decode())
    assert protein[:2] == [("a_chunk_1F1", "MAKG"), ("a_chunk_1F2", "WLK")]
    nucleotide = dict(parse_fasta(files["small_identified_nucleotide.fa"].decode()))
    assert nucleotide["a_chunk_1F1"] == "ATGGCTAAAGGT"  # capped at the chunk's end
    assert nucleotide["a_chunk_1F2"] == "TGGCTAAAGG"  # 3p + 1 bases
    # Upper-cased; tNN and Nac are dropped, so p = 2 and the slice is 7 bases.
    assert dict(protein)["b_chunk_1F1"] == "TV" and nucleotide["b_chunk_1F1"] == "ACGTNNN"
    assert len(protein) == 19 and [n for n, _ in protein] == list(nucleotide)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "4 sequences, 5 chunks" in err and "2 skipped" in err


def test_skipped_columns_constant():
    assert SKIPPED_COLUMNS == ("id", "kind", "reason")
    assert tsv_row(SKIPPED_COLUMNS) == "id\tkind\treason\n"


def test_output_names():
    out = translate_outputs(Path("d"), "x", 300)
    assert [p.name for p in out.paths] == ["x_chunked300.fa", "x_identified_nucleotide.fa",
                                           "x_identified_protein.faa", "x_skipped.tsv"]


@pytest.mark.parametrize("length", [0, 1, 59, 60, 61, 120, 125])
def test_fasta_layouts(length):
    seq = "ACGTA" * 25
    seq = seq[:length]
    lines = [seq[i: i + 60] for i in range(0, length, 60)]
    assert fasta_wrapped("id", seq) == ">id\n" + "".join(line + "\n" for line in lines)
    assert fasta_line("id", seq) == f">id\n{seq}\n"


def test_several_inputs_gzip_fastq_crlf_stdin_give_same_files(tmp_path, monkeypatch):
    plain = write(tmp_path, "plain.fa", SMALL)
    assert translate(plain, "-o", str(tmp_path / "ref")) == 0
    reference = {n.replace("plain", "X"): d for n, d in outputs_of(tmp_path / "ref").items()}
    fastq = b"".join(b"@%s\n%s\n+\n%s\n" % (h, s, b"I" * len(s))
                     for h, s in [(b"a desc", b"ATGGCTAAAGGTGAACTGTTTTAA"),
                                  (b"b", b"acgtNNNacgtaaa"), (b"empty", b""),
                                  (b"c", b"CTAGTTAGTTAG")])
    variants = {
        "gz.fa": gzip.compress(SMALL),  # gzip without a .gz name
        "fq.fastq": fastq,
        "crlf.fa": SMALL.replace(b"\n", b"\r\n"),
    }
    for i, (name, data) in enumerate(variants.items()):
        path = write(tmp_path / f"in{i}", name, data) if (tmp_path / f"in{i}").mkdir() is None \
            else ""
        out = tmp_path / f"out{i}"
        assert translate(path, "-o", str(out)) == 0, name
        stem = name.split(".")[0]
        assert {n.replace(stem, "X"): d for n, d in outputs_of(out).items()} == reference, name
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(gzip.compress(SMALL))))
    assert translate("-", "-o", str(tmp_path / "stdin")) == 0
    got = {n.replace("stdin", "X"): d for n, d in outputs_of(tmp_path / "stdin").items()}
    assert got == reference


def test_two_inputs_one_run_equal_two_runs(tmp_path):
    a = write(tmp_path, "a.fa", SMALL)
    b = write(tmp_path, "b.fa", b">z\nATGAAACCCGGGTTT\n")
    assert translate(a, b, "-o", str(tmp_path / "both")) == 0
    assert translate(a, "-o", str(tmp_path / "one")) == 0
    assert translate(b, "-o", str(tmp_path / "one")) == 0
    assert outputs_of(tmp_path / "both") == outputs_of(tmp_path / "one")


def test_bundled_example(tmp_path):
    example = resources.files("virnucpro") / "data" / "example.fa"
    text = example.read_text()
    records = parse_fasta(text)
    assert 10 <= len(records) <= 20
    assert all(100 <= len(seq) <= 1600 for _, seq in records)
    assert any(seq.islower() for _, seq in records)
    assert any("N" in seq for _, seq in records)
    with resources.as_file(example) as path:
        assert translate(str(path), "-o", str(tmp_path)) == 0
    kept = parse_fasta((tmp_path / "example_identified_protein.faa").read_text())
    parents = {name.split("_chunk_")[0] for name, _ in kept}
    assert len(parents) >= 5
    assert {name[-2:] for name, _ in kept} <= set(FRAME_NAMES)


# -------------------------------------------------------------------- safe writing
def test_existing_outputs_need_force(tmp_path, capsys):
    path = write(tmp_path, "small.fa", SMALL)
    out = tmp_path / "out"
    assert translate(path, "-o", str(out)) == 0
    before = outputs_of(out)
    (out / "small_skipped.tsv").write_text("old\n")
    capsys.readouterr()
    assert translate(path, "-o", str(out)) == 1
    err = capsys.readouterr().err
    assert err.startswith("virnucpro: error: ") and "small_chunked500.fa" in err
    assert "--force" in err and err.count("\n") == 1
    assert (out / "small_skipped.tsv").read_text() == "old\n"
    assert translate(path, "-o", str(out), "--force") == 0
    assert outputs_of(out) == before


def test_failed_run_writes_nothing(tmp_path, capsys):
    good = write(tmp_path, "good.fa", SMALL)
    bad = write(tmp_path, "bad.fa", b">x\nACGT\n>y\nACGTQ\n")
    out = tmp_path / "out"
    assert translate(good, bad, "-o", str(out)) == 1
    assert list(out.iterdir()) == []  # not even temporary files
    assert "bad.fa: record 2 ('y')" in capsys.readouterr().err


def test_atomic_writer(tmp_path):
    target = tmp_path / "f.txt"
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write("partial")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with atomic_write(target) as fh:
        fh.write("done\n")
    assert target.read_text() == "done\n" and len(list(tmp_path.iterdir())) == 1
    writer = AtomicWriter()
    fh = writer.open(tmp_path / "g.txt")
    fh.write("x")
    assert not (tmp_path / "g.txt").exists()
    writer.commit()
    assert (tmp_path / "g.txt").read_text() == "x"


def test_check_writable(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("")
    check_writable([tmp_path / "new" / "x"], force=False)
    check_writable([tmp_path / "f"], force=True)
    with pytest.raises(OutputError, match="already exists"):
        check_writable([tmp_path / "f"], force=False)
    with pytest.raises(OutputError, match="is a directory"):
        check_writable([tmp_path / "d"], force=True)


# ------------------------------------------------------------------------ bad input
def fa_gz(data: bytes) -> bytes:
    return gzip.compress(data)


CLI_BAD = [
    # name, content (None: do not create), substrings of the message besides the path
    ("missing.fa", None, ["no such file"]),
    ("empty.fa", b"", ["empty file"]),
    ("text.fa", b"just some text\n", ["not a FASTA or FASTQ file"]),
    ("binary.fa", b"\x00\x01\x02\xff" * 64, ["binary file"]),
    ("trunc.fa.gz", fa_gz(SMALL * 500)[:100], ["truncated or corrupt"]),
    ("protein.fa", b">ok\nACGT\n>prot1 kinase\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n",
     ["record 2 ('prot1')", "'P'"]),
    ("protein_gz.fa", fa_gz(b">ok\nACGT\n>prot1\nMSTQ\n"), ["record 2 ('prot1')", "'Q'"]),
    ("protein_crlf.fa", b">ok\r\nACGT\r\nAC\r\n>prot1\r\nACGT\r\nMSTQ\r\n",
     ["record 2 ('prot1')", "'Q'"]),
    ("dup.fa", b">a\nAC\n>a\nGG\n", ["record 2", "duplicate record id 'a'", "record 1"]),
    ("bad.fastq", b"@r1\nACGT\n+\nII\n", ["invalid FASTQ"]),
    ("protein.fastq", b"@r1\nACGT\n+\nIIII\n@r2\nMQ\n+\nII\n", ["record 2", "'r2'", "'Q'"]),
]


def check_one_line_error(capsys, rc: int, *needles: str) -> str:
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.out == ""
    assert "Traceback" not in captured.err
    assert captured.err.startswith("virnucpro: error: ") and captured.err.count("\n") == 1
    for needle in needles:
        assert needle in captured.err
    return captured.err


@pytest.mark.parametrize(("name", "data", "needles"), CLI_BAD, ids=[c[0] for c in CLI_BAD])
def test_cli_bad_input(tmp_path, capsys, name, data, needles):
    path = str(tmp_path / name) if data is None else write(tmp_path, name, data)
    out = tmp_path / "out"
    rc = translate(path, "-o", str(out))
    check_one_line_error(capsys, rc, f"{path}: ", *needles)
    assert not out.exists() or list(out.iterdir()) == []


def test_cli_bad_stdin(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b">ok\nAC\n>p\nMKQ\n")))
    rc = translate("-", "-o", str(tmp_path / "out"))
    check_one_line_error(capsys, rc, "stdin: record 2 ('p')", "'Q'")


def test_cli_duplicate_id_across_inputs(tmp_path, capsys):
    a = write(tmp_path, "a.fa", b">x\nAC\n>shared\nGG\n")
    b = write(tmp_path, "b.fq", b"@shared\nA\n+\nI\n")
    rc = translate(a, b, "-o", str(tmp_path / "out"))
    check_one_line_error(capsys, rc, f"{b}: record 1: duplicate record id 'shared'",
                         f"first seen in {a}, record 2)")


def test_cli_same_stem_twice(tmp_path, capsys):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    a = write(tmp_path / "one", "x.fa", SMALL)
    b = write(tmp_path / "two", "x.fasta.gz", gzip.compress(b">other\nAC\n"))
    rc = translate(a, b, "-o", str(tmp_path / "out"))
    check_one_line_error(capsys, rc, f"{b}: same output name 'x' as {a}")
    assert not (tmp_path / "out").exists()


def test_cli_output_dir_is_a_file(tmp_path, capsys):
    path = write(tmp_path, "s.fa", SMALL)
    assert translate(path, "-o", path) == 2  # click's usage error
    err = capsys.readouterr().err
    assert path in err and "is a file" in err and "Traceback" not in err


# ---------------------------------------------------------------------- no torch
def test_help_and_translate_do_not_import_torch(tmp_path):
    example = write(tmp_path, "s.fa", SMALL)
    code = textwrap.dedent(f"""
        import contextlib, io, sys
        from virnucpro.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["--help"]) == 0
            assert main(["translate", "--help"]) == 0
        assert main(["translate", {example!r}, "-o", {str(tmp_path / "out")!r}]) == 0
        heavy = sorted(m for m in ("torch", "transformers", "esm") if m in sys.modules)
        assert not heavy, heavy
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
