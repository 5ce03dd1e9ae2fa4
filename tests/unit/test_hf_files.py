"""The Hugging Face files a model config names (tokenizer, text config): staged by
`lumen models pull`, checked by `check_model`, loaded from the staged folder. Offline: the
"hub" is a local folder (`--hf-from`) or a fake listing; `transformers` is not installed
here, so the tokenizer open_clip would build from the staged folder is a stand-in."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import open_clip
import pytest

import lumen.models
from lumen.cli import run
from lumen.config import ModelSettings
from lumen.embedding import ClipModel
from lumen.models import (
    MANIFEST,
    TEXT_CONFIG,
    TOKENIZER,
    ChecksumMismatch,
    Source,
    StagedWeightsError,
    check_model,
    hf_folder,
    hf_repos,
    local_repo_files,
    pull,
    pull_hf_files,
    staged_hf_folders,
    staged_hf_options,
)
from tests.support.tiny_clip import MODEL_A, TinyClip, ensure_tiny_clip

TAG = "shapes-v1"
NAME = "lumen-tiny-hftok"  # model A's architecture, its tokenizer named as a hub repository
REPO = "acme/shapes-tokenizer"
TOKENIZER_FILES = {
    "tokenizer.json": b'{"version": "1.0"}',
    "tokenizer_config.json": b'{"model_max_length": 16}',
    "spiece.model": b"\x00sentencepiece" * 50,
}


@pytest.fixture(scope="module")
def tiny() -> TinyClip:
    return ensure_tiny_clip()


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = json.loads(json.dumps(MODEL_A.config))
    config["text_cfg"]["hf_tokenizer_name"] = REPO
    path = tmp_path_factory.mktemp("config") / f"{NAME}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return path


@pytest.fixture()
def transformers_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lumen.models, "has_transformers", lambda: True)


def fake_hub(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A local copy of a hub repository, with files that must not be staged beside."""
    folder = root / repo
    (folder / "onnx").mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "model.safetensors").write_bytes(b"weights" * 100)
    (folder / "README.md").write_text("# a model card")
    (folder / "onnx" / "config.json").write_text("{}")
    return root


def settings(tiny: TinyClip, config_file: Path, staged_dir: Path) -> ModelSettings:
    return ModelSettings(
        name=NAME,
        pretrained=TAG,
        staged_dir=str(staged_dir),
        config_file=str(config_file),
        fp16_on_gpu=False,
    )


def test_the_presets_name_their_hugging_face_repositories() -> None:
    assert hf_repos("xlm-roberta-base-ViT-B-32") == {"xlm-roberta-base": (TOKENIZER, TEXT_CONFIG)}
    assert hf_repos("ViT-B-16-SigLIP") == {"timm/ViT-B-16-SigLIP": (TOKENIZER,)}
    assert hf_repos("ViT-B-32") == {}
    assert hf_repos(MODEL_A.name) == {}


def test_pull_stages_only_the_tokenizer_files_with_their_sha256_once(
    config_file: Path, tmp_path: Path
) -> None:
    hub = fake_hub(tmp_path / "hub", REPO, TOKENIZER_FILES)
    listed: list[str] = []

    def listing(repo: str) -> list[Source]:
        listed.append(repo)
        return local_repo_files(hub)(repo)

    [(staged, fetched)] = pull_hf_files(NAME, tmp_path / "staged", listing)
    assert fetched and listed == [REPO]
    assert staged.folder == hf_folder(tmp_path / "staged", REPO)
    assert sorted(p.name for p in staged.folder.iterdir()) == sorted([*TOKENIZER_FILES, MANIFEST])
    manifest = json.loads((staged.folder / MANIFEST).read_text())
    assert manifest["roles"] == [TOKENIZER]
    for name, data in TOKENIZER_FILES.items():
        assert manifest["files"][name]["sha256"] == hashlib.sha256(data).hexdigest()
    [(_, fetched_again)] = pull_hf_files(NAME, tmp_path / "staged", listing)
    assert not fetched_again and listed == [REPO]  # intact: not listed or fetched again


def test_a_listing_without_tokenizer_files_is_refused_and_stages_nothing(
    config_file: Path, tmp_path: Path
) -> None:
    hub = fake_hub(tmp_path / "hub", REPO, {"config.json": b"{}"})
    with pytest.raises(StagedWeightsError, match="no tokenizer file"):
        pull_hf_files(NAME, tmp_path / "staged", local_repo_files(hub))
    assert not hf_folder(tmp_path / "staged", REPO).exists()
    with pytest.raises(StagedWeightsError, match="no folder"):
        pull_hf_files(NAME, tmp_path / "staged", local_repo_files(tmp_path / "empty"))


def test_a_hub_checksum_mismatch_stages_nothing(config_file: Path, tmp_path: Path) -> None:
    hub = fake_hub(tmp_path / "hub", REPO, TOKENIZER_FILES)

    def lying(repo: str) -> list[Source]:
        return [Source(s.url, "0" * 64, s.file_name) for s in local_repo_files(hub)(repo)]

    with pytest.raises(ChecksumMismatch):
        pull_hf_files(NAME, tmp_path / "staged", lying)
    folder = hf_folder(tmp_path / "staged", REPO)
    assert not (folder / MANIFEST).exists()
    with pytest.raises(StagedWeightsError, match="nothing staged"):
        staged_hf_folders(
            ModelSettings(name=NAME, pretrained=TAG, staged_dir=str(tmp_path / "staged"))
        )


def test_the_check_refuses_staged_weights_without_their_tokenizer_files(
    tiny: TinyClip, config_file: Path, tmp_path: Path, transformers_installed: None
) -> None:
    pull(NAME, TAG, tmp_path, Source(str(tiny.checkpoint)))
    model = settings(tiny, config_file, tmp_path)
    problem = check_model(model) or ""
    assert "text_cfg.hf_tokenizer_name = 'acme/shapes-tokenizer'" in problem
    assert f"LUMEN_MODEL__STAGED_DIR={tmp_path}" in problem
    assert f"lumen models pull {NAME} {TAG} --to {tmp_path}" in problem
    with pytest.raises(StagedWeightsError, match="hf_tokenizer_name"):
        ClipModel.from_settings(model, device="cpu")  # never the hub instead


def test_the_check_refuses_a_corrupt_or_missing_staged_tokenizer_file(
    tiny: TinyClip, config_file: Path, tmp_path: Path, transformers_installed: None
) -> None:
    pull(NAME, TAG, tmp_path, Source(str(tiny.checkpoint)))
    hub = fake_hub(tmp_path / "hub", REPO, TOKENIZER_FILES)
    [(staged, _)] = pull_hf_files(NAME, tmp_path, local_repo_files(hub))
    model = settings(tiny, config_file, tmp_path)
    assert check_model(model) is None
    (staged.folder / "tokenizer.json").write_bytes(b'{"version": "2.0"}')  # same size
    assert "is corrupt" in (check_model(model) or "")
    assert check_model(model, load=False) is None  # sizes only without `load`
    (staged.folder / "spiece.model").unlink()
    assert "spiece.model is missing" in (check_model(model, load=False) or "")


def test_a_replica_builds_the_tokenizer_from_the_staged_folder(
    tiny: TinyClip,
    config_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    transformers_installed: None,
) -> None:
    pull(NAME, TAG, tmp_path, Source(str(tiny.checkpoint)))
    pull_hf_files(
        NAME, tmp_path, local_repo_files(fake_hub(tmp_path / "hub", REPO, TOKENIZER_FILES))
    )
    built: list[tuple[str, dict[str, Any]]] = []

    def hf_tokenizer(source: str, **kw: Any) -> Any:  # transformers' AutoTokenizer stands in
        built.append((source, kw))
        return open_clip.SimpleTokenizer(context_length=kw["context_length"])

    monkeypatch.setattr(open_clip.tokenizer, "HFTokenizer", hf_tokenizer)
    model = ClipModel.from_settings(settings(tiny, config_file, tmp_path), device="cpu")
    assert built == [
        (str(hf_folder(tmp_path, REPO)), {"context_length": 16, "tokenizer_mode": None})
    ]
    reference = ClipModel.from_settings(tiny.model_settings(), device="cpu")
    assert (model.encode_texts(["a red circle"]) == reference.encode_texts(["a red circle"])).all()


def test_the_multilingual_preset_reads_its_text_config_from_the_staged_folder(
    tmp_path: Path, transformers_installed: None
) -> None:
    name, tag = "xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k"
    weights = tmp_path / "open_clip_model.safetensors"
    weights.write_bytes(b"not really weights")
    pull(name, tag, tmp_path / "staged", Source(str(weights)))
    model = ModelSettings(name=name, pretrained=tag, staged_dir=str(tmp_path / "staged"))
    problem = check_model(model, load=False) or ""
    assert "text_cfg.hf_tokenizer_name = 'xlm-roberta-base'" in problem
    assert "text_cfg.hf_model_name = 'xlm-roberta-base'" in problem
    files = {"config.json": b'{"model_type": "xlm-roberta"}', "tokenizer.json": b"{}"}
    files["sentencepiece.bpe.model"] = b"\x00spm" * 10
    hub = fake_hub(tmp_path / "hub", "xlm-roberta-base", files)
    pull_hf_files(name, tmp_path / "staged", local_repo_files(hub))
    assert check_model(model, load=False) is None
    folders = staged_hf_folders(model)
    text_cfg = staged_hf_options(model, folders)["text_cfg"]
    assert text_cfg["hf_model_name"] == str(hf_folder(tmp_path / "staged", "xlm-roberta-base"))
    assert text_cfg["hf_model_pretrained"] is False  # the text weights are in the staged file
    assert text_cfg["hf_pooler_type"] == "mean_pooler"  # the rest of open_clip's text_cfg


def test_the_check_names_the_missing_transformers_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lumen.models, "has_transformers", lambda: False)
    problem = check_model(ModelSettings(name="ViT-B-16-SigLIP", pretrained=None)) or ""
    assert "pip install transformers" in problem and "timm/ViT-B-16-SigLIP" in problem
    assert check_model(ModelSettings(name="ViT-B-32", pretrained=None)) is None


def test_cli_pull_stages_the_tokenizer_files_from_a_local_copy(
    tiny: TinyClip,
    config_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    transformers_installed: None,
) -> None:
    hub = fake_hub(tmp_path / "hub", REPO, TOKENIZER_FILES)
    pulled = [NAME, TAG, "--to", str(tmp_path / "staged"), "--from", str(tiny.checkpoint)]
    assert run(["models", "pull", *pulled, "--hf-from", str(tmp_path / "elsewhere")]) == 2
    assert f"no folder {tmp_path / 'elsewhere' / REPO}" in capsys.readouterr().err
    assert run(["models", "pull", *pulled, "--hf-from", str(hub)]) == 0
    out = capsys.readouterr().out
    assert f"Staged tokenizer files of {REPO}: {hf_folder(tmp_path / 'staged', REPO)}" in out
    assert check_model(settings(tiny, config_file, tmp_path / "staged")) is None
    assert run(["models", "pull", *pulled, "--hf-from", str(tmp_path / "elsewhere")]) == 0
    assert f"Already staged tokenizer files of {REPO}" in capsys.readouterr().out


def test_the_hub_listing_keeps_top_level_configs_and_vocabularies_pinned_to_a_revision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import huggingface_hub
    from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

    lfs = BlobLfsInfo(size=4_000_000, sha256="ab" * 32, pointer_size=130)
    siblings = [
        RepoSibling("config.json", 600),
        RepoSibling("sentencepiece.bpe.model", 4_000_000, lfs=lfs),
        RepoSibling("model.safetensors", 10**9, lfs=lfs),
        RepoSibling("onnx/tokenizer.json", 9_000),
        RepoSibling(".gitattributes", 1_500),
    ]

    class FakeApi:
        def model_info(self, repo: str, **kw: Any) -> Any:
            assert kw["files_metadata"] is True
            return type("Info", (), {"sha": "c" * 40, "siblings": siblings})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    sources = lumen.models.hub_repo_files("xlm-roberta-base")
    assert [(s.file_name, s.sha256) for s in sources] == [
        ("config.json", None),
        ("sentencepiece.bpe.model", "ab" * 32),
    ]
    assert all(f"/resolve/{'c' * 40}/" in s.url for s in sources)
