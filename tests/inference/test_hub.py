"""infer.py push: what goes to the Hub (the export or its self-contained folder, and a model card),
tested against a local folder (--dry-run) and a stand-in for HfApi: no network."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

import viewdiff.inference.hub as hub
from infer import main
from viewdiff.prior.load import load_export, read_export


class FakeHub:
    """HfApi's two calls, into a local folder per repository."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def __call__(self):  # stands in for the HfApi class
        return self

    def create_repo(self, repo_id, repo_type, private, exist_ok):
        self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, repo_type, commit_message):
        self.calls.append(("upload_folder", repo_id, repo_type))
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)


def test_push_uploads_the_self_contained_folder_with_a_card(tiny_export, tmp_path, monkeypatch):
    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(hub, "HfApi", fake)
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"mean": {"psnr": 18.25, "ssim": 0.61, "lpips": None}}))
    argv = ["push", "--export", str(tiny_export), "--repo-id", "me/tiny-prior",
            "--self-contained", "--private", "--metrics", str(evaluation)]  # fmt: skip
    assert main(argv) == 0
    assert fake.calls[0] == ("create_repo", "me/tiny-prior", "model", True, True)
    assert fake.calls[1] == ("upload_folder", "me/tiny-prior", "model")
    remote = tmp_path / "hub/me/tiny-prior"
    assert (remote / "model_index.json").is_file() and (remote / "vae").is_dir()
    card = (remote / "README.md").read_text()
    assert hub.card_metadata(card)["library_name"] == "viewdiff"
    assert "| psnr | 18.2500 |" in card and "lpips" not in card  # finite metrics only
    assert load_export(remote).info.step == read_export(tiny_export).step  # loads as uploaded


def test_a_hub_base_is_the_cards_base_model(tiny_export):
    info = dataclasses.replace(
        read_export(tiny_export), pretrained_model="stabilityai/stable-diffusion-2-1-base"
    )
    card = hub.model_card(info, "me/prior", None, self_contained=False)
    assert hub.card_metadata(card)["base_model"] == "stabilityai/stable-diffusion-2-1-base"


def test_dry_run_writes_what_would_be_uploaded(tiny_export, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "HfApi", lambda: pytest.fail("no network in a dry run"))
    out = tmp_path / "staged"
    argv = ["push", "--export", str(tiny_export), "--repo-id", "me/p", "--self-contained",
            "--dry-run", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert (out / "README.md").is_file() and (out / "multiview.safetensors").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--repo-id", "no-namespace"], "expected NAMESPACE/NAME"),
        (["--repo-id", "me/p"], "is a local folder, which nobody who downloads"),
        (["--repo-id", "me/p", "--self-contained", "--metrics", "{tmp}/missing.json"],
         "--metrics {tmp}/missing.json: cannot read"),
        (["--repo-id", "me/p", "--dry-run", "{tmp}/full"], "--dry-run {tmp}/full: not empty"),
    ],
)  # fmt: skip
def test_bad_push_input_exits_2_before_any_upload(
    tiny_export, tmp_path, monkeypatch, capsys, extra, message
):
    monkeypatch.setattr(hub, "HfApi", lambda: pytest.fail("nothing may be uploaded"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full/file").write_text("x")
    argv = ["push", "--export", str(tiny_export), *[a.format(tmp=tmp_path) for a in extra]]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
