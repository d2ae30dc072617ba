"""Provenance: C2PA, EXIF/XMP/IPTC, generator parameters, watermarks, the verdict.

What a file says of its origin, beside the pixels. Imports data only.
"""
