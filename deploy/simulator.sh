#!/bin/sh
# A device simulator for the compose demo: $DEVICES plants (default 20) publish a reading
# each second to enterprise/facilities/plant-NN/metrics, temperatures wandering around
# 60 °C with now and then a hot one (over 85 °C, which the queries/ rule alerts on).
host="${MQTT_HOST:-localhost}"
devices="${DEVICES:-20}"
until mosquitto_pub -h "$host" -t simulator/hello -m up 2>/dev/null; do sleep 1; done
while true; do
  awk -v n="$devices" -v seed="$(date +%s)" 'BEGIN {
    srand(seed);
    for (i = 1; i <= n; i++) {
      t = 60 + (rand() - 0.5) * 30;
      if (rand() < 0.05) t = 86 + rand() * 10;
      printf "plant-%02d {\"currentAmbientTemperature\": %.1f, \"geoCoordinates\": {\"latitude\": %.4f, \"longitude\": %.4f}}\n", i, t, 48 + i * 0.1, 11 + i * 0.1
    }
  }' | while read -r plant payload; do
    mosquitto_pub -h "$host" -q 1 -t "enterprise/facilities/$plant/metrics" -m "$payload"
  done
  sleep 1
done
