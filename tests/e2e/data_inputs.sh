#!/usr/bin/env bash
# tessera data: synth and verify for every schema, import-text, and the bad
# inputs each must refuse (exit 2 for a command line, 3 for data), with a
# message naming the flag, or the file and the field.
source "$(dirname "$0")/lib.sh"

expect_ok() {  # expect_ok NAME -- command...
  local name=$1
  shift 2
  if "$@" > "$WORK/out.txt" 2> "$WORK/err.txt"; then pass "$name"; else
    fail "$name: exit $?; stderr: $(cat "$WORK/err.txt")"; fi
}

# A copy of data set $1 as $2 whose manifest has sed expression $3 applied.
edited_copy() {
  rm -rf "$2"; cp -r "$1" "$2"
  sed -i -e "$3" "$2/manifest.textproto"
}

# Every schema: synth, then verify.
expect_ok "synth images" -- "$TESSERA" data synth --schema images --out "$WORK/images" --samples 40 --size 6 --shard-size 16
expect_ok "synth tokens" -- "$TESSERA" data synth --schema tokens --out "$WORK/tokens" --samples 60 --shard-size 25
expect_ok "synth associative recall" -- "$TESSERA" data synth --schema tokens --task associative-recall \
  --out "$WORK/recall" --samples 30 --pairs 4
grep -q "seq_len 17" "$WORK/out.txt" && pass "recall names its seq_len" || fail "recall: $(cat "$WORK/out.txt")"
expect_ok "synth interactions" -- "$TESSERA" data synth --schema interactions --out "$WORK/interactions" \
  --samples 50 --items 100 --clusters 5 --shard-size 20
for set in images tokens recall interactions; do
  expect_ok "verify $set" -- "$TESSERA" data verify "$WORK/$set"
done

# Sizes bounded before anything is allocated: exit 2 naming the flag.
expect_exit "synth --size 1000000" 2 "--size 1000000 is outside" -- \
  "$TESSERA" data synth --schema images --out "$WORK/x" --size 1000000
expect_exit "synth --channels 2147483647" 2 "--channels 2147483647 is outside" -- \
  "$TESSERA" data synth --schema images --out "$WORK/x" --channels 2147483647
expect_exit "synth --samples 10^11" 2 "--samples 100000000000 is outside" -- \
  "$TESSERA" data synth --schema tokens --out "$WORK/x" --samples 100000000000
expect_exit "synth images over 4 GiB" 2 "exceeds the limit" -- \
  "$TESSERA" data synth --schema images --out "$WORK/x" --samples 10000000 --size 1024
expect_exit "synth --max-length 2^40" 2 "--max-length 1099511627776 is outside" -- \
  "$TESSERA" data synth --schema interactions --out "$WORK/x" --max-length 1099511627776
expect_exit "synth --queries > --pairs" 2 "--queries 9 is outside \[1, 8\]" -- \
  "$TESSERA" data synth --schema tokens --task associative-recall --out "$WORK/x" --queries 9
expect_exit "synth unknown schema" 2 "--schema videos is unknown" -- \
  "$TESSERA" data synth --schema videos --out "$WORK/x"
expect_exit "synth --task for images" 2 "--task is for --schema tokens" -- \
  "$TESSERA" data synth --schema images --task associative-recall --out "$WORK/x"
expect_exit "synth stray argument" 2 "unexpected argument \"stray\"" -- \
  "$TESSERA" data synth --schema tokens --out "$WORK/x" stray
[ -e "$WORK/x" ] && fail "a refused synth created its folder" || pass "no folder after refused synth commands"

# Values beyond what the manifest declares: exit 3 naming the shard file and dataset.
edited_copy "$WORK/tokens" "$WORK/small_vocab" 's/value: "64"/value: "10"/; s/value: "63"/value: "9"/'
expect_exit "tokens beyond vocab_size" 3 'shard-00000.h5: dataset "tokens" entry [0-9]+ is [0-9]+, outside \[0, vocab_size 10\)' -- \
  "$TESSERA" data verify "$WORK/small_vocab"
edited_copy "$WORK/interactions" "$WORK/small_table" 's/value: "100"/value: "3"/'
expect_exit "items beyond num_items" 3 'shard-00000.h5: dataset "item_ids" entry [0-9]+ is [0-9]+, outside \[0, num_items 3\)' -- \
  "$TESSERA" data verify "$WORK/small_table"
edited_copy "$WORK/images" "$WORK/few_classes" 's/value: "10"/value: "2"/'
expect_exit "labels beyond num_classes" 3 'dataset "labels" entry [0-9]+ is [0-9]+, outside \[0, num_classes 2\)' -- \
  "$TESSERA" data verify "$WORK/few_classes"
edited_copy "$WORK/images" "$WORK/forged_count" '0,/num_samples: 16$/s//num_samples: 1099511627776/'
expect_exit "manifest declaring 2^40 samples" 3 "declares 1099511627776 samples in a file of" -- \
  "$TESSERA" data verify "$WORK/forged_count"
edited_copy "$WORK/tokens" "$WORK/no_eod" '/key: "eod_token"/,+1d'
expect_exit "tokens without eod_token" 3 'attributes\["eod_token"\] is missing' -- \
  "$TESSERA" data verify "$WORK/no_eod"
rm -rf "$WORK/truncated"; cp -r "$WORK/interactions" "$WORK/truncated"
truncate -s 2000 "$WORK/truncated/shard-00001.h5"
expect_exit "truncated interactions shard" 3 "shard-00001.h5" -- "$TESSERA" data verify "$WORK/truncated"

# import-text on small generated files (a fortune file and plain text).
mkdir -p "$WORK/text/sub"
printf 'First fortune.\n%%\nSecond\nfortune.\n%%\nThird.\n%%\n' > "$WORK/text/fortunes"
printf 'Para one.\n\nPara two.\n\n\nPara three.\n' > "$WORK/text/sub/plain.txt"
printf '\x00\x01binary' > "$WORK/text/sub/index.dat"
expect_ok "import-text" -- "$TESSERA" data import-text --out "$WORK/bytes" --eval-fraction 0.3 "$WORK/text"
grep -q "imported 2 files (1 skipped as binary): 6 documents" "$WORK/out.txt" \
  && pass "import-text counts files and documents" || fail "import-text: $(cat "$WORK/out.txt")"
expect_ok "verify imported train" -- "$TESSERA" data verify "$WORK/bytes/train"
expect_ok "verify imported eval" -- "$TESSERA" data verify "$WORK/bytes/eval"
expect_exit "import-text without --out" 2 "--out DIR is required" -- "$TESSERA" data import-text "$WORK/text"
expect_exit "import-text bad --eval-fraction" 2 "--eval-fraction 1.5 is outside" -- \
  "$TESSERA" data import-text --out "$WORK/y" --eval-fraction 1.5 "$WORK/text"
expect_exit "import-text missing input" 3 "nowhere: no such file or folder" -- \
  "$TESSERA" data import-text --out "$WORK/y" "$WORK/nowhere"

finish
