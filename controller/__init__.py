"""MFS controller: P4Runtime switch supervision, promotion engine, host report API, mfsctl."""
