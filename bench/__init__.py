"""Benchmarks of the bot: ``python -m bench`` prints one table and writes bench-report.json."""
