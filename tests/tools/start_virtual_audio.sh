#!/usr/bin/env bash
# Start a headless PulseAudio with virtual devices, so real sounddevice streams run without a sound card:
#   vspk  48 kHz stereo null sink (the default speaker; record what was played from vspk.monitor)
#   vmic  16 kHz mono null sink: feed it with `paplay --device=vmic x.wav`; vmic.monitor is the default mic
# Reuses a server that already answers (adding the sinks it lacks). Prints the variable to export:
#   eval "$(tests/tools/start_virtual_audio.sh)"
# Stop it with: pulseaudio --kill   (same XDG_RUNTIME_DIR)
set -euo pipefail
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d /tmp/koe-pulse-XXXXXX)}"
mkdir -p "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"
if ! pactl info >/dev/null 2>&1; then
  pulseaudio --daemonize=yes -n --exit-idle-time=-1 --disallow-exit --log-target=stderr \
    -L module-native-protocol-unix -L module-always-sink 2>/dev/null
  for _ in $(seq 1 50); do pactl info >/dev/null 2>&1 && break; sleep 0.1; done
fi
pactl info >/dev/null
sinks="$(pactl list short sinks)"
grep -qw vspk <<<"$sinks" || pactl load-module module-null-sink sink_name=vspk rate=48000 \
  sink_properties=device.description=VirtualSpeaker >/dev/null
grep -qw vmic <<<"$sinks" || pactl load-module module-null-sink sink_name=vmic rate=16000 channels=1 \
  sink_properties=device.description=VirtualMicFeed >/dev/null
pactl set-default-sink vspk
pactl set-default-source vmic.monitor
echo "export XDG_RUNTIME_DIR=$XDG_RUNTIME_DIR"
