"""Real-time classification of video files, cameras and network streams (``Classifier.stream``).

``stream.py`` the generator, ``sources.py`` what a source is and which are allowed, ``capture.py`` the supervised
capture child for live sources, ``config.py`` settings and per-frame results, ``output.py`` the CLI's writers.
"""
