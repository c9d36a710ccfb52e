"""``p4r serve``: the HTTP API over :mod:`p4r.query`, its explorer page and its load bench."""
