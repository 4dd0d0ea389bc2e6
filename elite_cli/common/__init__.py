"""What every layer uses: where files live, the settings, wording, failures, the PNG files elite writes."""
