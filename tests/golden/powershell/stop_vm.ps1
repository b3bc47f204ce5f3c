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

$ImagingAction = 'stop_vm'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Asks the guest to shut down; if it is not off within the timeout (or cannot be asked), turns it off.
    $Vm = 'NDXZOOM'
    $TimeoutS = 300
    $target = Get-VM -Name $Vm
    $Result['how'] = 'already off'
    $Result['forced'] = $false
    if ([string]$target.State -eq 'Saved') {
        throw "VM $Vm is in a saved state: start it or discard the saved state before stopping it"
    }
    if ([string]$target.State -ne 'Off') {
        $Result['changed'] = $true
        $job = Stop-VM -VM $target -Force -AsJob
        $deadline = [DateTime]::UtcNow.AddSeconds($TimeoutS)
        while ([DateTime]::UtcNow -lt $deadline -and [string](Get-VM -Name $Vm).State -ne 'Off' -and $job.State -ne 'Failed') {
            Start-Sleep -Seconds 2
        }
        if ([string](Get-VM -Name $Vm).State -eq 'Off') { $Result['how'] = 'shut down' }
        else {
            Stop-VM -VM $target -TurnOff -Force
            $Result['how'] = 'turned off'
            $Result['forced'] = $true
        }
        Remove-Job -Job $job -Force -ErrorAction SilentlyContinue
    }
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
