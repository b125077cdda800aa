"""The production services: the deletion batch, tuning, review and promotion, and the promotion gates."""
