"""What training and the tools (scripts/, client/, benchmarks/) both use and the served worker does not: reading a
built model archive (``model_archive.py``) and drawing detections (``draw.py``). It imports no other package of
the project, so every one of them may import it; training imports neither scripts/ nor client/.
"""
