"""The run store: one OME-Zarr per run, raw and restored side by side."""
