"""Inference: the Detector, tile scoring, precision, stability, cached features, ONNX, attacks.

Scoring with a trained model (attacks: a differentiable view of a detector). Imports model,
provenance and data; never evaluation, training or apps.
"""
