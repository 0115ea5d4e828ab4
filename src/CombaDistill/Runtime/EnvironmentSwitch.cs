namespace CombaDistill.Runtime;

/// <summary>An on/off environment variable: 1, true, on or yes turn it on; 0, false, off or no turn it off (any case, spaces ignored); anything else, or unset, leaves the default.</summary>
public static class EnvironmentSwitch
{
    public static bool IsOn(string variable, bool whenUnset) =>
        Environment.GetEnvironmentVariable(variable)?.Trim().ToLowerInvariant() switch
        {
            "1" or "true" or "on" or "yes" => true,
            "0" or "false" or "off" or "no" => false,
            _ => whenUnset,
        };
}
