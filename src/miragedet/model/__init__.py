"""Model: frozen CLIP backbone, prompts, MiraGe, losses, configs, checkpoint format.

Also the process-group helpers the loss needs for its cross-rank gather. Imports data only.
"""
