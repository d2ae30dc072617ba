"""Evaluation: scores, metrics, reports, calibration, analysis, data audit, attack report.

Imports inference and below; never training or apps.
"""
