"""What both sides of a round share: settings, wire records, the task (data, models, features), the run
directory, the canonical artifact derivation."""
