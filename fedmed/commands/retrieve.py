"""``fedmed retrieve --site-home DIR QUERY``: a site's most similar images to a query image.

Answers from the index that the site's node wrote into its own site home at the end of an
``imaging-retrieval`` run (:mod:`fedmed.explain.retrieval_index`): the site's own training
images, embedded by the federated model. Nothing else is read — no other site's index, no run
directory, no coordinator — so an answer can only name this site's images (docs/retrieval.md).
The query (PNG/JPEG, DICOM, a DICOM series folder or NIfTI) is read with the imaging packs'
readers, normalised and resized as the site's images were, embedded by the index's own model,
and never stored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedmed.clients.site_home import SiteHome
from fedmed.config import TaskRef
from fedmed.data.imaging_readers import read_image, to_model_input
from fedmed.errors import ConfigError, DataError
from fedmed.explain.outcome import EXPLANATIONS_DIR, RUNS_DIR, explanation_folder
from fedmed.explain.retrieval_index import INDEX_FILE, Match, SiteIndex
from fedmed.tasks import get_task
from fedmed.tasks.imaging_retrieval import ImagingRetrievalTask

console = Console()


def index_folder(site_home: Path, run: str | None) -> Path:
    """The folder of the site's index: of run ``run``, else of its latest retrieval run."""
    if run is not None:
        folder = explanation_folder(site_home, run)
        if not (folder / INDEX_FILE).is_file():
            raise DataError(f"{folder}: no retrieval index of run {run!r} in this site home")
        return folder
    found = list(site_home.glob(f"{RUNS_DIR}/*/{EXPLANATIONS_DIR}/{INDEX_FILE}"))
    if not found:
        raise DataError(f"{site_home}: no retrieval index; an imaging-retrieval run writes one "
                        "into each site home on its last round")  # fmt: skip
    return max(found, key=lambda path: path.stat().st_mtime).parent


def retrieve(
    site_home: Path, query: Path, k: int, run: str | None = None
) -> tuple[str, list[Match]]:
    """The folder of the index used and the ``k`` matches of ``query`` in it."""
    home = SiteHome.with_audit_log(site_home)
    if home is None:
        raise DataError(f"{site_home}: not a site home (no audit log)")
    folder = index_folder(site_home, run)
    index, state = SiteIndex.load(folder)
    if index.site != home.site:
        raise DataError(f"{folder}: index of site {index.site!r}, not of this home's "
                        f"site {home.site!r}")  # fmt: skip
    pack = get_task(TaskRef(str(index.about.get("task", "")), index.about.get("settings", {})))
    if not isinstance(pack, ImagingRetrievalTask):
        raise ConfigError(f"{folder}: index of task {pack.name!r}, not imaging-retrieval")
    model = pack.build_model()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DataError(f"{folder}: the index's model does not fit its task ({exc})") from None
    image = to_model_input(read_image(query), pack.settings.image_size)
    return str(folder), index.search(pack.embed_images(model, image[None])[0], k)


def cmd_retrieve(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise ConfigError("--k must be at least 1")
    folder, matches = retrieve(args.site_home, args.query, args.k, args.run)
    if args.json:
        print(json.dumps({"query": str(args.query), "index": folder,
                          "matches": [vars(m) for m in matches]}, indent=2))  # fmt: skip
        return 0
    table = Table(title=f"nearest of {len(matches)} in {folder}")
    for column in ("rank", "id", "label", "distance", "fingerprint"):
        table.add_column(column)
    for m in matches:
        table.add_row(str(m.rank), m.id, str(m.label), f"{m.distance:.4f}", m.fingerprint)
    console.print(table)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "retrieve",
        help="find a site's most similar images to a query image, from its own index",
        description="Embed QUERY with the federated model of the site's latest (or --run) "
        "imaging-retrieval run and print the k nearest images of the site's own index, "
        "nearest first. Reads only the site home: no other site's images can be returned.",
    )
    parser.add_argument("query", type=Path, metavar="QUERY",
                        help="image file: PNG/JPEG, DICOM, a DICOM series folder or NIfTI")
    parser.add_argument("--site-home", type=Path, required=True, help="the site's home")
    parser.add_argument("--k", type=int, default=5, help="matches to print (default 5)")
    parser.add_argument("--run", help="run id whose index to use (default: the latest)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=cmd_retrieve)
