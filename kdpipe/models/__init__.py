"""Models: encoder-family adapters, hook taps, SPS, loading/saving, and the student factory.

Inside the package, lower modules never import higher ones:
``family`` → ``bert``, ``distilbert`` → ``adapters`` → ``taps``, ``sps`` → ``loading`` → ``students``.
"""
