#!/bin/sh
# Runs fuzz targets one after another, each for SECONDS (default 200), one libFuzzer process at a
# time, restarting a target after a crash until its time is used (at most 6 starts). Needs the
# targets built first (`RUSTC_BOOTSTRAP=1 cargo fuzz build`) and the corpus seeded (`sh fuzz/seed.sh`).
#   sh fuzz/run_all.sh [SECONDS [TARGET...]]      logs in fuzz/logs/<target>.log, a summary line each
set -u
cd "$(dirname "$0")/.."
secs=${1:-200}
[ $# -gt 0 ] && shift
targets=${*:-$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v wgdit-fuzz)}
bin=fuzz/target/x86_64-unknown-linux-gnu/release
mkdir -p fuzz/logs
for t in $targets; do
    mkdir -p fuzz/corpus/"$t" fuzz/artifacts/"$t"
    log=fuzz/logs/$t.log
    : >"$log"
    start=$(date +%s) execs=0 crashes=0 starts=0
    while :; do
        left=$((secs - ($(date +%s) - start)))
        [ "$left" -lt 10 ] || [ "$starts" -ge 6 ] && break
        starts=$((starts + 1))
        "$bin/$t" fuzz/corpus/"$t" -max_total_time="$left" -print_final_stats=1 -rss_limit_mb=2048 \
            -malloc_limit_mb=2048 -timeout=10 -artifact_prefix=fuzz/artifacts/"$t"/ >>"$log" 2>&1
        rc=$?
        n=$(grep 'stat::number_of_executed_units' "$log" | tail -1 | awk '{print $2}')
        # a crashed run prints no final stats: count the last status line's executions instead
        [ "$rc" -ne 0 ] && n=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#') && crashes=$((crashes + 1))
        execs=$((execs + ${n:-0}))
        echo "== run $starts rc=$rc execs=${n:-0}" >>"$log"
        [ "$rc" -eq 0 ] && break
    done
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)
    echo "$t: $(( $(date +%s) - start ))s execs=$execs $cov crashes=$crashes corpus=$(ls fuzz/corpus/"$t" | wc -l) artifacts=$(ls fuzz/artifacts/"$t" | wc -l)"
done
