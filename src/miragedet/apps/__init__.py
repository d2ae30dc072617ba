"""Apps: the command line, the server and web page, detect, score-dataset, quickstart, doctor.

Thin shells over the layers below; nothing imports apps.
"""
