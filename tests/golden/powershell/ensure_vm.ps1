# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'ensure_vm'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Creates the VM without disks if it is absent. An existing VM is left alone; differences from the
    # inventory are reported as drift so that nothing on a running instrument changes behind its back.
    $Vm = 'NDXZOOM'
    $Generation = 2
    $MemoryMb = [long]16384
    $Cpus = 4
    $Switch = 'Instrument Network'
    $drift = New-Object System.Collections.Generic.List[string]
    $existing = Get-VM -Name $Vm -ErrorAction SilentlyContinue
    if ($null -eq $existing) {
        if ($null -eq (Get-VMSwitch -Name $Switch -ErrorAction SilentlyContinue)) {
            throw "the virtual switch '$Switch' does not exist on this host"
        }
        $created = New-VM -Name $Vm -Generation $Generation -MemoryStartupBytes ($MemoryMb * 1048576) -NoVHD -SwitchName $Switch
        Set-VMProcessor -VM $created -Count $Cpus
        Set-VM -VM $created -AutomaticCheckpointsEnabled $false -AutomaticStopAction ShutDown
        $Result['changed'] = $true
    }
    else {
        if ($existing.Generation -ne $Generation) { $drift.Add("generation is $($existing.Generation), want $Generation") }
        if ($existing.MemoryStartup -ne ($MemoryMb * 1048576)) { $drift.Add("startup memory is $($existing.MemoryStartup / 1048576) MB, want $MemoryMb MB") }
        if ($existing.ProcessorCount -ne $Cpus) { $drift.Add("processor count is $($existing.ProcessorCount), want $Cpus") }
    }
    $Result['drift'] = @($drift.ToArray())
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
