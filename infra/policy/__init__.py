"""The Neuraxis CrossGuard policy pack: validators are plain functions (`validators`), the pack
(`__main__`) only adapts Pulumi's policy resources to them."""
