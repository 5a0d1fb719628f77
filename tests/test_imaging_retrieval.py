"""Federated image retrieval (``imaging-retrieval``): a per-example loss DP-SGD can clip, the
retrieval metrics, and the production path — a two-site DP federation through ``fedmed run``
whose sites each index their own images, then ``fedmed retrieve`` against one site's home."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedmed.cli import main
from fedmed.data.imaging_synth import SIZE_CLASSES, make_site_images
from fedmed.explain.retrieval_index import INDEX_FILE, GalleryQueries, SiteIndex, image_fingerprint
from fedmed.tasks import get_task
from fedmed.tasks.imaging_retrieval import retrieval_scores

REPO = Path(__file__).resolve().parents[1]
SITES = ("academic", "legacy")


@dataclass(frozen=True)
class Federation:
    homes: Path
    run_id: str
    metrics: dict


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """One DP round (the example's default: DP-SGD at ε = 1) of two synthetic sites at 32 px,
    run once for the tests below through the CLI's ``run``."""
    root = tmp_path_factory.mktemp("retrieval")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDMED_STATE", str(root / "state"))
        patch.setenv("FLWR_HOME", str(root / "state" / "flwr"))
        code = main(["run", str(REPO / "examples" / "imaging-retrieval"), "--rounds", "1",
                     "--sites-home", str(root / "homes"), "--out", str(root / "run"),
                     "--set", "sites=" + ",".join(SITES)])  # fmt: skip
        assert code == 0
        metrics = json.loads((root / "run" / "metrics.json").read_text())
        yield Federation(root / "homes", metrics["run-id"], metrics)


def write_query(path: Path, site: str, position: int) -> Path:
    """A site's test image as an 8-bit PNG, as a clinician would hand it over."""
    image = make_site_images(site, 0).test.images[position]
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)
    return path


def site_fingerprints(site: str) -> set[str]:
    """Fingerprints of every image (training and test) of a site, as the pack loads them."""
    test = get_task("imaging-retrieval").load_site(site, None, 0).test
    assert isinstance(test, GalleryQueries)
    return {image_fingerprint(image) for image in (*test.gallery_images, *test.query_images)}


def test_each_example_has_its_own_loss_term() -> None:
    """Why the pack can run under DP-SGD: an example's loss (and so its clipped gradient)
    depends on that example and the parameters only — not on which other images share its
    batch, as a contrastive or triplet loss's would."""
    pack = get_task("imaging-retrieval")
    images = pack.load_site("academic", None, 0).train
    torch.manual_seed(0)
    model = pack.build_model().eval()

    def first_term(positions: list[int]) -> torch.Tensor:
        inputs = torch.stack([images[p][0] for p in positions])
        targets = torch.stack([images[p][1] for p in positions])
        return torch.nn.functional.cross_entropy(model(inputs), targets.long(),
                                                 reduction="none")[0]  # fmt: skip

    assert torch.allclose(first_term([0, 1, 2]), first_term([0, 7, 9, 11]), atol=1e-6)
    inputs = torch.stack([images[p][0] for p in range(3)])
    targets = torch.stack([images[p][1] for p in range(3)])
    terms = torch.nn.functional.cross_entropy(model(inputs), targets.long(), reduction="none")
    assert torch.allclose(pack.loss(model(inputs), targets), terms.mean())


def test_synthetic_sites_carry_three_size_classes() -> None:
    data = get_task("imaging-retrieval").load_site("mobile", None, 0)
    labels = torch.stack([data.train[i][1] for i in range(len(data.train))])
    assert sorted(set(labels.long().tolist())) == list(range(len(SIZE_CLASSES)))


def test_retrieval_scores_on_a_worked_example() -> None:
    """Gallery labels by distance from the query: relevant at ranks 1 and 3 of 10, with 2
    relevant images in all: AP@10 = (1/1 + 2/3) / 2."""
    gallery = torch.tensor([[float(i), 0.0] for i in range(12)])
    labels = torch.tensor([1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    scores = retrieval_scores(torch.tensor([[0.0, 0.0]]), torch.tensor([1]), gallery, labels)
    assert scores["map_at_10"] == pytest.approx((1 + 2 / 3) / 2)
    assert scores["precision_at_1"] == 1.0 and scores["precision_at_10"] == pytest.approx(0.2)


def test_fedmed_retrieve_answers_from_the_site_s_own_index(
    federation: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fedmed retrieve --site-home`` of each site returns k images, all of that site, with
    distances in order — also for a query image taken from the other site."""
    assert set(federation.metrics["final"]["per_site"]) == set(SITES)
    for site in SITES:
        assert set(federation.metrics["final"]["per_site"][site]) == {
            "map_at_10", "precision_at_1", "precision_at_10"}
        assert federation.metrics["privacy"][site]["epsilon"] > 0  # trained with DP-SGD
    for home_site in SITES:
        for query_site in SITES:
            query = write_query(tmp_path / f"{query_site}.png", query_site, 3)
            capsys.readouterr()
            code = main(["retrieve", "--site-home", str(federation.homes / home_site),
                         "--k", "7", "--json", str(query)])  # fmt: skip
            assert code == 0
            answer = json.loads(capsys.readouterr().out)
            matches = answer["matches"]
            assert len(matches) == 7 and [m["rank"] for m in matches] == list(range(1, 8))
            assert all(m["id"].startswith(f"{home_site}/train/") for m in matches)
            distances = [m["distance"] for m in matches]
            assert distances == sorted(distances)
            assert Path(answer["index"]).is_relative_to(federation.homes / home_site)


def test_each_index_holds_its_own_site_s_images_only(federation: Federation) -> None:
    """Every record of a site's index is one of its own training images (all of them), and no
    fingerprint of the other site's images — training or test — is in it; no index is written
    anywhere but the site homes."""
    for site in SITES:
        folder = federation.homes / site / "runs" / federation.run_id / "explanations"
        index, _ = SiteIndex.load(folder)
        own = get_task("imaging-retrieval").load_site(site, None, 0).test
        assert isinstance(own, GalleryQueries)
        assert index.site == site and index.ids == own.gallery_ids
        assert list(index.fingerprints) == [image_fingerprint(i) for i in own.gallery_images]
        others = set().union(*(site_fingerprints(other) for other in SITES if other != site))
        assert not set(index.fingerprints) & others
        assert all(record.startswith(f"{site}/") for record in index.ids)
        assert np.allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, atol=1e-5)
        # docs/retrieval.md: files 0600; the coordinator gets the count and folder only; the
        # write is an `explanations` entry of the site's signed log naming every file
        files = sorted(folder.iterdir())
        assert files and all(f.stat().st_mode & 0o777 == 0o600 for f in files)
        told = federation.metrics["explanations"][site]
        assert told == {"round": told["round"], "count": len(files), "folder": str(folder)}
        log = [json.loads(line) for line in (federation.homes / site / "audit.jsonl").open()]
        (entry,) = [e["payload"] for e in log if e["kind"] == "explanations"]
        assert len(entry["files"]) == len(files)
    indexes = list(federation.homes.parent.rglob(INDEX_FILE))
    assert sorted(p.relative_to(federation.homes).parts[0] for p in indexes) == sorted(SITES)


def test_retrieve_refuses_another_site_s_index(
    federation: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An index copied into another site's home is refused, not answered from."""
    home = tmp_path / "academic"
    shutil.copytree(federation.homes / "academic", home)
    folder = home / "runs" / federation.run_id / "explanations"
    shutil.rmtree(folder)
    shutil.copytree(federation.homes / "legacy" / "runs" / federation.run_id / "explanations",
                    folder)  # fmt: skip
    query = write_query(tmp_path / "q.png", "academic", 0)
    assert main(["retrieve", "--site-home", str(home), str(query)]) == 2
    assert "index of site 'legacy', not of this home's site 'academic'" in capsys.readouterr().err
    assert main(["retrieve", "--site-home", str(tmp_path / "nowhere"), str(query)]) == 2
    assert "not a site home" in capsys.readouterr().err
