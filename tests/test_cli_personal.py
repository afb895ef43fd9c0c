"""Names, pass ids and guardians never need to be on the command line."""

from __future__ import annotations

import io
import json
import re

from edge.config import PROJECT_ROOT

from .gallery_helpers import cli, config


def _args(tmp_path):
    return ["--config", str(config(tmp_path)), "--db", str(tmp_path / "g.db"),
            "--key-file", str(tmp_path / "k.key")]  # fmt: skip


def _people(capsys, tmp_path):
    rc, out, err = cli(capsys, "people", *_args(tmp_path), "--json")
    assert rc == 0, err
    return json.loads(out)


def test_enroll_reads_name_pass_id_and_guardian_from_files_and_stdin(
    tmp_path, capsys, fixtures, monkeypatch
):
    photo = str(fixtures / "faces" / "obama" / "obama.jpg")
    assert cli(capsys, "keys", "init", "--key-file", str(tmp_path / "k.key"))[0] == 0
    (tmp_path / "name.txt").write_text("Ada Park\n")
    rc, out, err = cli(
        capsys, "enroll", *_args(tmp_path), "--name-file", str(tmp_path / "name.txt"),
        "--consent-version", "v1", "--min-templates", "1", photo,
    )  # fmt: skip
    assert rc == 0, err
    (person,) = _people(capsys, tmp_path)
    assert person["name"] == "Ada Park"
    # stdin: one line per detail, in the order name, pass id
    monkeypatch.setattr("sys.stdin", io.StringIO("Grace Hopper\nAP-77\n"))
    rc, out, err = cli(
        capsys, "enroll", *_args(tmp_path), "--name-file", "-", "--pass-id-file", "-",
        "--consent-version", "v1", "--min-templates", "1", "--force",
        str(fixtures / "faces" / "obama" / "obama2.jpg"),
    )  # fmt: skip
    assert rc == 0, err
    names = {p["name"]: p for p in _people(capsys, tmp_path)}
    assert "Grace Hopper" in names
    assert names["Grace Hopper"]["pass"] == "AP-77"


def test_name_and_name_file_together_or_an_empty_file_are_one_line_errors(tmp_path, capsys):
    assert cli(capsys, "keys", "init", "--key-file", str(tmp_path / "k.key"))[0] == 0
    (tmp_path / "x.jpg").write_bytes(b"not a photo")
    (tmp_path / "empty.txt").write_text("\n")
    for extra in (["--name", "X", "--name-file", str(tmp_path / "empty.txt")],
                  ["--name-file", str(tmp_path / "empty.txt")],
                  ["--name-file", str(tmp_path / "missing.txt")]):  # fmt: skip
        rc, out, err = cli(
            capsys,
            "enroll",
            *_args(tmp_path),
            *extra,
            "--consent-version",
            "v1",
            str(tmp_path / "x.jpg"),
        )
        assert rc == 2, extra
        assert len(err.strip().splitlines()) == 1, err
        assert "--name" in err
    (tmp_path / "zero.txt").write_bytes(b"")  # no line at all (it read "list index out of range")
    rc, out, err = cli(
        capsys, "enroll", *_args(tmp_path), "--name-file", str(tmp_path / "zero.txt"),
        "--consent-version", "v1", str(tmp_path / "x.jpg"),
    )  # fmt: skip
    assert rc == 2 and "the first line is empty" in err and "index" not in err, err


def test_readme_examples_keep_personal_details_off_the_command_line():
    readme = (PROJECT_ROOT / "README.md").read_text()
    exposed = re.findall(r"--(?:name|guardian|pass-id) [\"'A-Z]", readme)
    assert exposed == []
