"""Posed multi-view data: the CO3Dv2 format (co3d.py), synthetic objects in that format
(synthetic.py), and, beside them, webdataset shards written from it and streamed back."""
