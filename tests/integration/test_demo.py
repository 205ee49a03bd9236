"""`cdc demo` end to end, short: CI exercises the main job on every landing."""


def test_demo_runs_end_to_end_with_a_clean_verify(dbs, cdc, tmp_path):
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive"), "CDC_DATA_DIR": str(tmp_path / "data")}
    result = cdc("demo", "--scale", "tiny", "--duration", "5", "--rate", "60", env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[7/7] verify:" in result.stdout
    assert " 0 differences" in result.stdout
    assert "demo finished" in result.stdout
