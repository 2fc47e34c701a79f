"""``python -m viewdiff.toy pretrain`` SIGKILLed in each stage, resumed, and ending with the
Stable Diffusion folder of an uninterrupted run, byte for byte (issue 32, item 1)."""

from pathlib import Path

from tests.commands.kill_runs import REPO, finish, kill_after_checkpoint, start

TOY = REPO / "viewdiff" / "toy" / "__main__.py"


def test_a_pretrain_killed_in_each_stage_resumes_to_the_uninterrupted_folder(
    tmp_path: Path, toy_fit_shards: Path, toy_heldout_shards: Path
):
    def pretrain(out: Path):
        return start("pretrain", "--shards", str(toy_fit_shards), "--heldout",
                     str(toy_heldout_shards), "--out", str(out), "--vae-steps", "8",
                     "--unet-steps", "8", "--vae-batch-size", "4", "--unet-batch-size", "4",
                     "--checkpoint-every", "2", "--threads", "1", script=TOY)  # fmt: skip

    finish(pretrain(tmp_path / "whole"))
    out = tmp_path / "killed"
    kills = [kill_after_checkpoint(pretrain(out), out / "vae/checkpoint/state.json", "step", 4)]
    kills.append(
        kill_after_checkpoint(pretrain(out), out / "unet/checkpoint/state.json", "step", 2)
    )
    assert kills[0] < 8 and kills[1] < 8, kills  # inside each stage
    assert not (out / "sd").exists()
    finish(pretrain(out))
    whole = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole/sd").rglob("*"))
    assert whole == sorted(p.relative_to(out) for p in (out / "sd").rglob("*"))
    for path in whole:
        if (tmp_path / "whole" / path).is_file():
            assert (out / path).read_bytes() == (tmp_path / "whole" / path).read_bytes(), path
