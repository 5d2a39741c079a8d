"""The foundation every layer may use: errors, typed config, metric direction, field typing,
terminal text and plots. Imports nothing else of this package."""
