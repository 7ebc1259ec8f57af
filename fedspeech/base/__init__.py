"""What every layer may use: errors, atomic files, CLI errors, checks (stdlib only)."""
