from bild.cli import main


def test_env_prints_versions(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "- torch: " in out and "- transformers: " in out and "- cpu: " in out


def test_no_command_prints_help(capsys):
    assert main([]) == 1
    assert "fetch" in capsys.readouterr().out


def test_fetch_list(capsys):
    assert main(["fetch", "--list"]) == 0
    assert "qwen2.5-coder" in capsys.readouterr().out
