"""napari plug-in (npe2, manifest ``napari.yaml``): a reader that opens a lowdose run store from its root
as named layers (raw, restored, uncertainty) with the physical scale, one contrast window for raw and
restored, and the time axis; and the "lowdose live" dock widget, which shows a daemon's newest restored
frame (from its preview PUB socket) beside the raw frame it came from. Install with ``pip install
"lowdose[napari]"``; ``lowdose view RUN.ome.zarr`` opens a store.
"""
