"""The platform's ground: the home and its layout, settings, atomic file IO, storage locations (local or object
store), records (journals and pointers: files or PostgreSQL) and the content-addressed artifact store. Every
later stage builds on these."""
