"""Reports: plain data (:mod:`.data`), figures (:mod:`.figures`) and pages (:mod:`.page`) are pure
functions; :mod:`.writer` is the one place that reads what the stages wrote and writes report
files."""
