"""The round without a transport or SpeechBrain: RoundCore, its row, settings, protocol."""
