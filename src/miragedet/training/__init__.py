"""Training: the step, the trainer loop with its state and logs, the dry run.

Imports evaluation (validation) and below; never apps.
"""
