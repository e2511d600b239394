#!/usr/bin/env bash
# The real MovieLens subset in Debian's r-cran-dslabs (100 004 ratings, 671
# users, 9 066 movies, with timestamps) as an interactions data set:
#   scripts/movielens_dslabs.sh OUT_DIR [TESSERA_BINARY]
# writes OUT_DIR/ratings.csv (the R export) and OUT_DIR/data (the import),
# installing r-cran-dslabs with apt-get when R cannot load it.
set -euo pipefail
out=${1:?usage: scripts/movielens_dslabs.sh OUT_DIR [TESSERA_BINARY]}
tessera=${2:-build/bin/tessera}
if ! Rscript -e 'library(dslabs)' > /dev/null 2>&1; then
  apt-get install -y --no-install-recommends r-cran-dslabs
fi
mkdir -p "$out"
Rscript -e "library(dslabs); data(movielens); write.csv(movielens[, c(\"userId\",\"movieId\",\"rating\",\"timestamp\")], \"$out/ratings.csv\", row.names=FALSE, quote=FALSE)"
rm -rf "$out/data"
"$tessera" data import-movielens --input "$out/ratings.csv" --out "$out/data"
