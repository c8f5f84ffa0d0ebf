"""``cmdr bench``: the judge path per stage (``judge_path``), fast paths against the plain way (``compare``) and the
node as it runs on the cell (``node``)."""
