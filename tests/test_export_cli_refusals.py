"""so8t export's refusals of its own arguments: docs/gguf.md promises `error: ...` and exit status 2 for every
refusal, and scripts tell a refusal (2) from a crash (1) by it."""

import pytest


@pytest.mark.parametrize("args, says", [
    (["--quant", "Q8_0", "--refit-head", "Q8_0", "--refit-rows", "10"], "--refit-rows 10"),
    (["--quant", "Q8_0", "--refit-head", "Q4_K_M"], "--refit-head Q4_K_M: not among the rungs"),
])
def test_refit_refusals_end_with_status_2_before_anything_is_read(tmp_path, capsys, args, says):
    """Both ended through sys.exit(message): status 1, as for a crash. The checkpoint does not exist: the
    arguments are refused before it is looked at, and --out is not made."""
    from so8t_lib.cli import main as so8t

    out = tmp_path / "out"
    assert so8t(["export", str(tmp_path / "no-checkpoint"), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err, err
    assert not out.exists()
