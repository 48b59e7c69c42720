"""QEMU-backed integration test harness for arm64 memory hot-remove.

Data flows one way: build -> boot -> drive -> inspect -> verdict -> report.
"""
__version__ = "0.1.0"
