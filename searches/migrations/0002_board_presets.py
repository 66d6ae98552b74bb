"""Load the built-in, read-only board presets (vendor figures for the whole chip).

The data is frozen here on purpose: a migration must give the same rows whatever the models
become later.  A user's own profile usually budgets less than the chip total, leaving room for
firmware, stacks and runtime.
"""

from __future__ import annotations

from django.db import migrations

# (name, MCU, core, clock MHz, SRAM KB, flash KB, notes); 1 MB = 1024 KB.
BOARD_PRESETS = [
    ("Arduino Uno R3", "ATmega328P", "avr", 16, 2, 32, ""),
    ("Arduino Nano 33 BLE Sense", "nRF52840", "cortex-m4f", 64, 256, 1024, ""),
    ("SparkFun Edge", "Apollo3 Blue", "cortex-m4f", 48, 384, 1024, ""),
    ("Raspberry Pi Pico", "RP2040", "cortex-m0plus", 133, 264, 2048, "2 cores; flash is external QSPI"),
    ("Raspberry Pi Pico 2", "RP2350", "cortex-m33", 150, 520, 4096, "2 cores; flash is external QSPI"),
    ("NUCLEO-F401RE", "STM32F401RE", "cortex-m4f", 84, 96, 512, ""),
    ("NUCLEO-L476RG", "STM32L476RG", "cortex-m4f", 80, 128, 1024, ""),
    ("NUCLEO-G474RE", "STM32G474RE", "cortex-m4f", 170, 128, 512, ""),
    ("STM32L4R9I-DISCO", "STM32L4R9AI", "cortex-m4f", 120, 640, 2048, ""),
    ("B-U585I-IOT02A", "STM32U585AI", "cortex-m33", 160, 786, 2048, ""),
    ("STM32F746G-DISCO", "STM32F746NG", "cortex-m7", 216, 320, 1024, ""),
    ("NUCLEO-H743ZI2", "STM32H743ZI", "cortex-m7", 480, 1024, 2048, ""),
    ("nRF5340 DK (app core)", "nRF5340", "cortex-m33", 128, 512, 1024, "application core"),
    ("ESP32-S3-DevKitC-1", "ESP32-S3", "xtensa-lx7", 240, 512, 8192, "2 cores; flash is external"),
    ("Teensy 4.0", "i.MX RT1062", "cortex-m7", 600, 1024, 2048, ""),
]


def load_presets(apps, schema_editor):
    HardwareProfile = apps.get_model("searches", "HardwareProfile")
    for name, mcu, core, clock_mhz, sram_kb, flash_kb, notes in BOARD_PRESETS:
        HardwareProfile.objects.update_or_create(
            name=name,
            is_preset=True,
            owner=None,
            defaults={
                "board": name,
                "mcu": mcu,
                "core": core,
                "clock_mhz": clock_mhz,
                "sram_kb": sram_kb,
                "flash_kb": flash_kb,
                "latency_ms": None,
                "notes": notes,
            },
        )


def unload_presets(apps, schema_editor):
    HardwareProfile = apps.get_model("searches", "HardwareProfile")
    HardwareProfile.objects.filter(is_preset=True, name__in=[row[0] for row in BOARD_PRESETS]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("searches", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(load_presets, unload_presets),
    ]
