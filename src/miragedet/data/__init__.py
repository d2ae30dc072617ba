"""Data: images, formats and decode, layouts, transforms, views, degradations, synthetic sets.

The bottom layer: it imports nothing else of miragedet.
"""
