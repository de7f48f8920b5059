"""The serve role: exports of stored custody trees."""
