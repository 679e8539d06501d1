"""Pure domain logic, by stage: platform < data < training < release < scoring < monitoring.

A stage imports only itself and the stages before it; nothing here imports dagster, defs or serving
(mlplatform_tests/test_layers.py holds both rules).
"""
