"""The programs' code: each ``scripts/NAME.py`` runs ``fedspeech.tools.NAME.main``."""
