"""The store's root as one NGFF collection: the ``bioformats2raw.layout``, and finding images by name.

The root of a run's store is a ``bioformats2raw.layout`` group (NGFF 0.5's transitional layout for
several images in one store, the one ome-writers writes for positions): ``OME/zarr.json`` lists every
image of the run in ``series`` by its name (position by position: ``raw``, ``restored``,
``uncertainty``; ``raw_p1``, ... for further positions), so a reader that follows ``series`` finds all of
them from the root, and ``yaozarrs validate`` checks the root and every image it lists.

Readers that ignore ``series`` and look for images named ``0``, ``1``, ... (ome-zarr-models' model,
ome-zarr-py's ``info``) find none yet: renaming the images to numbers is left for when every reader
inside lowdose goes through :func:`images`.

Readers inside lowdose (and viewers built on it) find images with :func:`images`, which also reads
stores written before the root was a collection.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lowdose.wire.durable import write_file

from . import ngff

BF2RAW = {"version": ngff.NGFF_VERSION, "bioformats2raw.layout": 3}


def write_series(root: Path, names: list[str], fsync: bool) -> None:
    """``OME/zarr.json`` listing the images ``names`` (paths from the root) in ``series``, in order.

    No ``OME/METADATA.ome.xml``: the layout makes it optional, and a file in a group is what makes
    zarr-python warn "not recognized as a component of a Zarr hierarchy" when it walks the store.
    """
    ome = root / "OME"
    ome.mkdir(exist_ok=True)
    group = {"zarr_format": 3, "node_type": "group",
             "attributes": {"ome": {"version": ngff.NGFF_VERSION, "series": names}}}
    write_file(ome / "zarr.json", json.dumps(group, indent=2).encode(), fsync=fsync, atomic=True)


_NAME = re.compile(r"^(raw|restored|uncertainty)(?:_p(\d+))?$")


def images(root: Path | str) -> dict[int, dict[str, Path]]:
    """Every image of a run's store by position: ``{p: {"raw": path, "restored": path, "uncertainty": path}}``.

    ``uncertainty`` is there only when the model gave one. The paths are the NGFF image groups (their
    level 0 is ``<path>/0``). Reads the root's ``OME/zarr.json`` series when there is one, and the
    store's folders otherwise (stores written before the root was a collection).
    """
    root = Path(root)
    try:
        names = json.loads((root / "OME" / "zarr.json").read_text())["attributes"]["ome"]["series"]
    except (OSError, ValueError, KeyError, TypeError):
        names = sorted(d.name for d in root.iterdir() if (d / "0" / "zarr.json").is_file()) if root.is_dir() else []
    out: dict[int, dict[str, Path]] = {}
    for name in names:
        m = _NAME.match(str(name))
        if m is None or not (root / name / "zarr.json").is_file():
            continue
        out.setdefault(int(m.group(2) or 0), {})[m.group(1)] = root / name
    return dict(sorted(out.items()))
