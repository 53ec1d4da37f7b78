"""Process infrastructure every layer shares: connecting to Ray, collective ops, console output."""
